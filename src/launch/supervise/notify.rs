//! The sd_notify protocol, both ways. Each child may get a `NOTIFY_SOCKET` of its own (a
//! datagram socket in the abstract namespace that secret-run reads): `READY=1` counts only
//! when the kernel says (SCM_CREDENTIALS) that the child itself sent it, as systemd's
//! `NotifyAccess=main`; `STATUS=` lines go to the log. And when secret-run itself runs under
//! systemd (`Type=notify`, its own `NOTIFY_SOCKET`), it tells its manager READY, RELOADING and
//! STOPPING.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, bind, recvmsg,
    sendto, setsockopt, socket, sockopt,
};
use nix::unistd::Pid;
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// What a child's notify socket received, from whom.
#[derive(Debug)]
pub struct Message {
    /// The child the socket belongs to.
    pub child: Pid,
    /// Who sent it, as the kernel says.
    pub sender: Pid,
    pub text: String,
}

/// A child's notify socket, before the child exists.
#[derive(Debug)]
pub struct ChildSocket {
    fd: OwnedFd,
    /// `NOTIFY_SOCKET` for the child: `@` then the abstract name.
    pub env: String,
}

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

impl ChildSocket {
    pub fn bind() -> Result<ChildSocket> {
        let name = format!(
            "secret-run/{}/notify-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(Error::os("create a notify socket"))?;
        setsockopt(&fd, sockopt::PassCred, &true).map_err(Error::os("ask for credentials"))?;
        let addr = UnixAddr::new_abstract(name.as_bytes()).map_err(Error::os("name it"))?;
        bind(fd.as_raw_fd(), &addr).map_err(Error::os("bind a notify socket"))?;
        Ok(ChildSocket {
            fd,
            env: format!("@{name}"),
        })
    }

    /// Reads the socket until the task is aborted (when the child has ended), passing every
    /// datagram on with its sender.
    pub fn listen(
        self,
        child: Pid,
        to: mpsc::UnboundedSender<Message>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let std_socket = std::os::unix::net::UnixDatagram::from(self.fd);
            let Ok(socket) = tokio::net::UnixDatagram::from_std(std_socket) else {
                return;
            };
            let mut buf = vec![0u8; 4096];
            loop {
                if socket.readable().await.is_err() {
                    return;
                }
                let received = socket.try_io(tokio::io::Interest::READABLE, || {
                    receive(socket.as_raw_fd(), &mut buf).map_err(std::io::Error::from)
                });
                match received {
                    Ok((sender, text)) => {
                        if to
                            .send(Message {
                                child,
                                sender,
                                text,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "notify socket read failed");
                        return;
                    }
                }
            }
        })
    }
}

/// One datagram and its sender (EAGAIN when there is none waiting).
fn receive(fd: std::os::fd::RawFd, buf: &mut [u8]) -> nix::Result<(Pid, String)> {
    let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)?;
    let mut sender = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmCredentials(creds) = c {
                sender = Some(Pid::from_raw(creds.pid()));
            }
        }
    }
    let len = msg.bytes;
    let text = String::from_utf8_lossy(&buf[..len]).into_owned();
    // Without credentials the sender is unknown, and counts as nobody.
    Ok((sender.unwrap_or(Pid::from_raw(0)), text))
}

/// `READY=1` among a message's lines.
pub fn says_ready(text: &str) -> bool {
    text.lines().any(|l| l.trim() == "READY=1")
}

/// The `STATUS=` line of a message, if any.
pub fn status(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("STATUS="))
}

/// secret-run's own manager (systemd with `Type=notify`), from `NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct Manager {
    fd: OwnedFd,
    addr: UnixAddr,
}

/// What secret-run tells its manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tell {
    /// The first child is ready, or a reload is over.
    Ready {
        pid: i32,
    },
    Reloading,
    Stopping,
}

impl Manager {
    /// `None` when secret-run was not started with a `NOTIFY_SOCKET`.
    pub fn from_env() -> Option<Manager> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => UnixAddr::new_abstract(name),
            None => UnixAddr::new(bytes),
        }
        .ok()?;
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .ok()?;
        Some(Manager { fd, addr })
    }

    pub fn tell(&self, what: &Tell) {
        let text = match what {
            Tell::Ready { pid } => format!(
                "READY=1\nSTATUS=running, child pid {pid}\nMAINPID={}",
                std::process::id()
            ),
            Tell::Reloading => {
                let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
                    .map(|t| t.tv_sec() * 1_000_000 + t.tv_nsec() / 1000)
                    .unwrap_or(0);
                format!("RELOADING=1\nSTATUS=reloading the secrets\nMONOTONIC_USEC={now}")
            }
            Tell::Stopping => "STOPPING=1\nSTATUS=stopping".to_owned(),
        };
        if let Err(e) = sendto(
            self.fd.as_raw_fd(),
            text.as_bytes(),
            &self.addr,
            MsgFlags::empty(),
        ) {
            tracing::debug!(error = %e, "cannot notify the service manager");
        }
    }
}
