//! `[run] listen`: sockets secret-run binds once, before any secret is fetched, and hands to every
//! child by systemd's socket-activation protocol: the sockets at fds 3, 4, … in the order
//! written, `LISTEN_FDS`, `LISTEN_FDNAMES`, and `LISTEN_PID` = the child's own PID. Because the
//! sockets stay open in secret-run, a restart refuses no connection (clients wait in the
//! kernel's backlog), and during an overlap both children accept on the same sockets.
//!
//! `LISTEN_PID` can only be known after fork, where nothing may be allocated: the child's
//! program, arguments and environment are laid out before the fork ([`Image`]), and the child
//! writes its PID into a slot reserved for it and calls execve itself.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, UnixAddr, bind, listen,
    setsockopt, socket, sockopt,
};
use secrecy::zeroize::Zeroizing;

use crate::error::Error;
use crate::manifest::run::{Listen, ListenAddr};

/// The first fd of socket activation (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// The sockets of `listen`, held for the whole run.
#[derive(Debug, Default)]
pub struct Listeners {
    sockets: Vec<Socket>,
}

#[derive(Debug)]
struct Socket {
    fd: OwnedFd,
    name: String,
    /// A socket file secret-run created, removed at exit.
    created: Option<PathBuf>,
}

impl Listeners {
    /// Binds every address of `listen`, or takes the sockets systemd passed to secret-run
    /// (`LISTEN_PID` = this process) in their place.
    pub fn open(specs: &[Listen]) -> Result<Listeners, Error> {
        if specs.is_empty() {
            return Ok(Listeners::default());
        }
        if let Some(inherited) = from_systemd(specs)? {
            return Ok(inherited);
        }
        let mut sockets = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let mut socket = bind_one(spec)?;
            // Held at 3, 4, … in secret-run too when those are free (they are, this early):
            // then no descriptor of the parent that a child's dup2 overwrites is one that
            // matters between fork and exec (std's exec-error pipe).
            let want = FIRST_FD + i as RawFd;
            if socket.fd.as_raw_fd() != want
                && !is_open(want)
                && dup_to(socket.fd.as_raw_fd(), want).is_ok()
            {
                set_cloexec(want);
                // SAFETY: `want` was free a moment ago and now holds a copy that nothing
                // else owns; the old descriptor is closed when replaced here.
                #[allow(unsafe_code)]
                let moved = unsafe { OwnedFd::from_raw_fd(want) };
                socket.fd = moved;
            }
            sockets.push(socket);
        }
        Ok(Listeners { sockets })
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The socket files stay when secret-run ends (`--exec`: the command serves on them).
    pub fn keep_files(&mut self) {
        for s in &mut self.sockets {
            s.created = None;
        }
    }

    /// `LISTEN_FDS`, and `LISTEN_FDNAMES` when a name was given.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("LISTEN_FDS", self.sockets.len().to_string())];
        if self.sockets.iter().any(|s| s.name != "unknown") {
            let names: Vec<&str> = self.sockets.iter().map(|s| s.name.as_str()).collect();
            env.push(("LISTEN_FDNAMES", names.join(":")));
        }
        env
    }

    /// Copies of the sockets at descriptors above the ones they will take in the child, so
    /// that moving one into place cannot overwrite another. Made before fork.
    pub fn staged(&self) -> Result<Staged, Error> {
        let above = FIRST_FD + self.sockets.len() as RawFd;
        let fds = self
            .sockets
            .iter()
            .map(|s| {
                dup_above(s.fd.as_raw_fd(), above)
                    .map_err(Error::os("duplicate a listening socket for the child"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Staged { fds })
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for s in &self.sockets {
            if let Some(path) = &s.created {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// The sockets, ready to be moved to 3, 4, … in a child.
#[derive(Debug)]
pub struct Staged {
    fds: Vec<OwnedFd>,
}

impl Staged {
    /// Puts the sockets at 3, 4, … (dup2 clears close-on-exec on the copies). Called between
    /// fork and exec: system calls only, nothing allocated.
    pub fn install(&self) -> std::io::Result<()> {
        for (i, fd) in self.fds.iter().enumerate() {
            dup_to(fd.as_raw_fd(), FIRST_FD + i as RawFd)?;
        }
        Ok(())
    }
}

// Descriptor numbers, not owned descriptors: the protocol is about numbers (3, 4, …). Each of
// these is one system call that touches no memory, usable after fork.

fn dup_to(fd: RawFd, target: RawFd) -> std::io::Result<()> {
    // SAFETY: dup2 takes two numbers; it replaces `target` if it is open, which the callers
    // intend (a child's 3, 4, …; a free slot in secret-run).
    #[allow(unsafe_code)]
    let r = unsafe { nix::libc::dup2(fd, target) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn dup_above(fd: RawFd, min: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes numbers only and returns a new descriptor.
    #[allow(unsafe_code)]
    let r = unsafe { nix::libc::fcntl(fd, nix::libc::F_DUPFD_CLOEXEC, min) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `r` is the new descriptor, owned by nothing else.
    #[allow(unsafe_code)]
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD reads a descriptor's flags; an unused number gives EBADF.
    #[allow(unsafe_code)]
    let r = unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) };
    r >= 0
}

fn set_cloexec(fd: RawFd) -> bool {
    // SAFETY: F_SETFD sets a descriptor's flags; numbers only.
    #[allow(unsafe_code)]
    let r = unsafe { nix::libc::fcntl(fd, nix::libc::F_SETFD, nix::libc::FD_CLOEXEC) };
    r >= 0
}

/// The sockets systemd passed, when they are for this process: as many as `listen` names, in
/// the same order.
fn from_systemd(specs: &[Listen]) -> Result<Option<Listeners>, Error> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        == Some(std::process::id());
    let Some(count) = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.trim().parse::<usize>().ok())
        .filter(|_| ours)
    else {
        return Ok(None);
    };
    if count != specs.len() {
        return Err(Error::Listen {
            addr: "the sockets systemd passed".into(),
            reason: format!(
                "LISTEN_FDS is {count}, but `listen` names {}; make the .socket unit and `listen` agree",
                specs.len()
            ),
            source: std::io::ErrorKind::InvalidInput.into(),
        });
    }
    let sockets = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let fd = FIRST_FD + i as RawFd;
            if !set_cloexec(fd) {
                return Err(Error::Listen {
                    addr: spec.addr.to_string(),
                    reason: format!("fd {fd}, which LISTEN_FDS says systemd passed, is not open"),
                    source: std::io::Error::last_os_error(),
                });
            }
            // SAFETY: systemd hands these descriptors to this process (LISTEN_PID checked);
            // nothing else in secret-run owns them.
            #[allow(unsafe_code)]
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            Ok(Socket {
                fd,
                name: spec.name.clone().unwrap_or_else(|| "unknown".into()),
                created: None,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    tracing::debug!(count, "listening on the sockets systemd passed");
    Ok(Some(Listeners { sockets }))
}

fn bind_one(spec: &Listen) -> Result<Socket, Error> {
    let shown = spec.addr.to_string();
    let failed = |what: &str, e: nix::Error| Error::Listen {
        addr: shown.clone(),
        reason: explain(what, e),
        source: e.into(),
    };
    let (fd, created) = match &spec.addr {
        ListenAddr::Tcp(addr) => {
            let family = if addr.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
                .map_err(|e| failed("socket", e))?;
            // A restarted secret-run binds again at once, whatever the old connections' state.
            setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| failed("setsockopt", e))?;
            match addr {
                std::net::SocketAddr::V4(a) => bind(fd.as_raw_fd(), &SockaddrIn::from(*a)),
                std::net::SocketAddr::V6(a) => bind(fd.as_raw_fd(), &SockaddrIn6::from(*a)),
            }
            .map_err(|e| failed("bind", e))?;
            (fd, None)
        }
        ListenAddr::Unix(path) => {
            clear_stale(path, &shown)?;
            let fd = socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(|e| failed("socket", e))?;
            let addr = UnixAddr::new(path.as_path()).map_err(|e| failed("address", e))?;
            bind(fd.as_raw_fd(), &addr).map_err(|e| failed("bind", e))?;
            if let Some(mode) = spec.mode {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(
                    |e| Error::Listen {
                        addr: shown.clone(),
                        reason: format!("cannot set its mode to {mode:o}: {e}"),
                        source: e,
                    },
                )?;
            }
            (fd, Some(path.clone()))
        }
    };
    // As long a queue as the system allows: during a restart, clients wait in it.
    listen(&fd, Backlog::MAXCONN).map_err(|e| failed("listen", e))?;
    tracing::debug!(addr = %shown, fd = fd.as_raw_fd(), "listening");
    Ok(Socket {
        fd,
        name: spec.name.clone().unwrap_or_else(|| "unknown".into()),
        created,
    })
}

/// A socket file left by a run that ended without removing it is replaced; one that a live
/// server answers on, or a file that is not a socket, is refused.
fn clear_stale(path: &Path, shown: &str) -> Result<(), Error> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let refuse = |reason: String| Error::Listen {
        addr: shown.to_owned(),
        reason,
        source: std::io::ErrorKind::AlreadyExists.into(),
    };
    if !meta.file_type().is_socket() {
        return Err(refuse(
            "the path exists and is not a socket; remove it or choose another path".into(),
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(refuse(
            "a running server answers on it; stop it or choose another path".into(),
        ));
    }
    std::fs::remove_file(path).map_err(|e| Error::Listen {
        addr: shown.to_owned(),
        reason: format!("cannot remove the stale socket file: {e}"),
        source: e,
    })
}

fn explain(what: &str, e: nix::Error) -> String {
    match e {
        nix::Error::EADDRINUSE => {
            "the address is in use: another process listens there (`ss -ltnp` shows which)".into()
        }
        nix::Error::EACCES => {
            "permission denied: ports below 1024 need CAP_NET_BIND_SERVICE, a socket path needs a writable directory".into()
        }
        nix::Error::ENOENT => "the socket's directory does not exist; create it first".into(),
        nix::Error::EADDRNOTAVAIL => {
            "no interface of this machine has that address".into()
        }
        e => format!("{what} failed: {e}"),
    }
}

/// The child's program, arguments and environment laid out before fork, with a slot for
/// `LISTEN_PID`: the child fills it in and calls execve without allocating.
pub struct Image {
    path: CString,
    /// Never read: it owns the strings `argv_ptrs` points into.
    _argv: Vec<CString>,
    env: Vec<Zeroizing<Vec<u8>>>,
    /// NULL-terminated arrays of pointers into `_argv` and `env` (whose buffers do not move).
    argv_ptrs: Vec<usize>,
    env_ptrs: Vec<usize>,
    pid_slot: usize,
}

/// The environment holds the secrets: only its size is shown.
impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("path", &self.path)
            .field("variables", &self.env.len())
            .finish_non_exhaustive()
    }
}

const PID_PREFIX: &[u8] = b"LISTEN_PID=";

impl Image {
    /// From a prepared command: its program, arguments, and explicitly set environment (the
    /// whole of it: `child_command` clears the inherited one), plus `extra`.
    pub fn of(cmd: &Command, arg0: &std::ffi::OsStr, extra: &[(&str, String)]) -> Option<Image> {
        let path = CString::new(cmd.get_program().as_bytes()).ok()?;
        let argv: Vec<CString> = std::iter::once(arg0)
            .chain(cmd.get_args())
            .map(|a| CString::new(a.as_bytes()).ok())
            .collect::<Option<_>>()?;
        let mut env: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        let overridden = |k: &std::ffi::OsStr| {
            k.as_bytes() == b"LISTEN_PID" || extra.iter().any(|(n, _)| n.as_bytes() == k.as_bytes())
        };
        for (k, v) in cmd.get_envs() {
            let Some(v) = v else { continue };
            if overridden(k) {
                continue;
            }
            let mut entry = Zeroizing::new(Vec::with_capacity(k.len() + v.len() + 2));
            entry.extend_from_slice(k.as_bytes());
            entry.push(b'=');
            entry.extend_from_slice(v.as_bytes());
            entry.push(0);
            env.push(entry);
        }
        for (k, v) in extra {
            let mut entry = Zeroizing::new(format!("{k}={v}").into_bytes());
            entry.push(0);
            env.push(entry);
        }
        let mut slot = Zeroizing::new(PID_PREFIX.to_vec());
        slot.resize(PID_PREFIX.len() + 21, 0);
        env.push(slot);
        let pid_slot = env.len() - 1;
        let argv_ptrs = argv
            .iter()
            .map(|a| a.as_ptr() as usize)
            .chain(std::iter::once(0))
            .collect();
        let env_ptrs = env
            .iter()
            .map(|e| e.as_ptr() as usize)
            .chain(std::iter::once(0))
            .collect();
        Some(Image {
            path,
            _argv: argv,
            env,
            argv_ptrs,
            env_ptrs,
            pid_slot,
        })
    }

    /// Writes this process's PID into `LISTEN_PID` and executes the program. Called between
    /// fork and exec; returns only when execve failed.
    pub fn exec(&mut self) -> std::io::Error {
        let slot = &mut self.env[self.pid_slot][PID_PREFIX.len()..];
        let mut pid = nix::unistd::getpid().as_raw().unsigned_abs();
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (pid % 10) as u8;
            n += 1;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        for i in 0..n {
            slot[i] = digits[n - 1 - i];
        }
        slot[n] = 0;
        // SAFETY: `path` is a NUL-terminated string; `argv_ptrs` and `env_ptrs` are
        // NULL-terminated arrays of pointers to NUL-terminated strings owned by `self`, whose
        // buffers have not moved since the pointers were taken. execve only reads them.
        #[allow(unsafe_code)]
        unsafe {
            nix::libc::execve(
                self.path.as_ptr(),
                self.argv_ptrs.as_ptr().cast(),
                self.env_ptrs.as_ptr().cast(),
            );
        }
        std::io::Error::last_os_error()
    }
}
