//! The child's stdout and stderr through redaction (`--redact`, `[run] redact`): each stream
//! that is redacted becomes a pipe, which a thread of its own reads, redacts and writes to
//! secret-run's own stream, so that each stream keeps its order and a slow reader of one does
//! not hold the other. Every child of the run (restarts, overlaps) writes into the same pipes.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::manifest::run::Redact;
use crate::redact::{Redactor, Stream};

/// How long an ending run waits for the last output of the child (a grandchild may still hold
/// the pipe).
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// The pipes' size, and what one read takes: 1 MiB, Linux's default `pipe-max-size`.
const PIPE_SIZE: i32 = 1 << 20;

#[derive(Debug)]
pub struct Redirect {
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    redactor: Arc<RwLock<Arc<Redactor>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    done: std::sync::mpsc::Receiver<()>,
}

/// Whether secret-run's own stream `fd` is a terminal.
fn is_terminal(fd: impl AsFd) -> bool {
    nix::unistd::isatty(fd).unwrap_or(false)
}

impl Redirect {
    /// The streams `mode` redacts, each with its pump; `None` when there is none.
    pub fn start(mode: Redact, redactor: Redactor) -> Result<Option<Redirect>> {
        let wanted = |terminal: bool| match mode {
            Redact::Never => false,
            Redact::Auto => !terminal,
            Redact::Always => true,
        };
        let out = wanted(is_terminal(std::io::stdout()));
        let err = wanted(is_terminal(std::io::stderr()));
        if !out && !err {
            return Ok(None);
        }
        let redactor = Arc::new(RwLock::new(Arc::new(redactor)));
        let (finished, done) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        let mut pump = |to: OwnedFd, name: &str| -> Result<OwnedFd> {
            let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(Error::os("create a pipe for the child's output"))?;
            // A larger pipe: fewer wake-ups for a child that writes a lot. The system may
            // refuse (fs.pipe-max-size); the default then serves.
            let _ = nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
            let shared = Arc::clone(&redactor);
            let finished = finished.clone();
            let handle = std::thread::Builder::new()
                .name(format!("redact-{name}"))
                .spawn(move || {
                    run_pump(read, to, &shared);
                    let _ = finished.send(());
                })
                .map_err(Error::os("start a thread for the child's output"))?;
            threads.push(handle);
            Ok(write)
        };
        let dup = |fd: std::os::fd::BorrowedFd<'_>| {
            fd.try_clone_to_owned()
                .map_err(Error::os("duplicate secret-run's output"))
        };
        let stdout = if out {
            Some(pump(dup(std::io::stdout().as_fd())?, "stdout")?)
        } else {
            None
        };
        let stderr = if err {
            Some(pump(dup(std::io::stderr().as_fd())?, "stderr")?)
        } else {
            None
        };
        Ok(Some(Redirect {
            stdout,
            stderr,
            redactor,
            threads,
            done,
        }))
    }

    /// Also match `more`'s values (a rotation's): the old ones stay matched.
    pub fn add(&self, more: &Redactor) {
        if more.is_empty() {
            return;
        }
        if let Ok(mut current) = self.redactor.write() {
            let merged = current.with(more);
            *current = Arc::new(merged);
        }
    }

    /// `text` from the child that secret-run itself prints (a `STATUS=` line), redacted like the
    /// child's output.
    pub fn redact(&self, text: &str) -> String {
        let Ok(current) = self.redactor.read() else {
            return String::new();
        };
        let mut stream = Stream::default();
        let mut out = Vec::new();
        stream.feed(&current, text.as_bytes(), &mut out);
        stream.finish(&current, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The child's stdout and stderr: the pipes, or `None` to inherit secret-run's.
    pub fn for_child(&self) -> (Option<std::process::Stdio>, Option<std::process::Stdio>) {
        let stdio = |fd: &Option<OwnedFd>| {
            fd.as_ref()
                .and_then(|f| f.try_clone().ok())
                .map(std::process::Stdio::from)
        };
        (stdio(&self.stdout), stdio(&self.stderr))
    }

    /// Closes secret-run's ends of the pipes and waits (a little) until the child's last
    /// output is through.
    pub fn finish(mut self) {
        self.stdout = None;
        self.stderr = None;
        let until = std::time::Instant::now() + DRAIN_WAIT;
        for _ in 0..self.threads.len() {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if self.done.recv_timeout(left).is_err() {
                tracing::debug!("the child's output is still open (a grandchild?); not waiting");
                return;
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Reads the pipe until every writer has closed it, redacting into `to`.
fn run_pump(read: OwnedFd, to: OwnedFd, redactor: &RwLock<Arc<Redactor>>) {
    let mut from = std::fs::File::from(read);
    let mut to = std::fs::File::from(to);
    let mut stream = Stream::default();
    let mut buf = vec![0u8; PIPE_SIZE as usize];
    let mut out = Vec::with_capacity(PIPE_SIZE as usize);
    let current = || redactor.read().map(|r| Arc::clone(&r)).ok();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let Some(r) = current() else { break };
        stream.feed(&r, &buf[..n], &mut out);
        if !out.is_empty() && to.write_all(&out).is_err() {
            // Our own output is gone (a closed pipe): keep reading, so the child is not
            // blocked on a full pipe, but drop what it writes.
        }
        out.clear();
    }
    // The buffers held the child's output, values included: zeroed once, at the end (per
    // chunk it would cost more than the redaction itself).
    secrecy::zeroize::Zeroize::zeroize(&mut buf);
    if let Some(r) = current() {
        stream.finish(&r, &mut out);
        let _ = to.write_all(&out);
        secrecy::zeroize::Zeroize::zeroize(&mut out);
    }
}
