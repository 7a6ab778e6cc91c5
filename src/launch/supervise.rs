//! Supervise mode (the default): secret-run stays the child's parent, forwards the signals a
//! service manager or a container runtime sends, and exits with the child's code (128 + N when
//! signal N killed it).
//!
//! Handlers are installed before the child is spawned, so a signal that arrives in between is
//! not lost (nor does it kill secret-run and orphan the child). SIGINT is not forwarded when the
//! child already got it from the terminal: both are in the terminal's foreground process group.

use std::process::Command;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::Target;
use super::exec::spawn_error;
use super::exit::code_of;
use crate::error::{Error, Result};

/// Forwarded as they are. SIGHUP becomes "reload" with the rotation work; until then it is passed on.
const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGHUP,
    Signal::SIGINT,
];

pub async fn supervise(mut cmd: Command, target: &Target) -> Result<u8> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    for &sig in FORWARDED {
        let mut stream = signal(SignalKind::from_raw(sig as i32))
            .map_err(|e| Error::Internal(format!("cannot install a handler for {sig}: {e}")))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(sig).is_err() {
                    break;
                }
            }
        });
    }
    let mut child_exited = signal(SignalKind::child())
        .map_err(|e| Error::Internal(format!("cannot install a handler for SIGCHLD: {e}")))?;

    let child = cmd.spawn().map_err(|e| spawn_error(target, &e))?;
    // The command holds a copy of the environment, values included: let it go now.
    drop(cmd);
    let pid = Pid::from_raw(child.id() as i32);
    tracing::debug!(pid = pid.as_raw(), program = %target.path.display(), "child started");

    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(status) => {
                if let Some(code) = code_of(status) {
                    tracing::debug!(pid = pid.as_raw(), code, "child ended");
                    return Ok(code);
                }
            }
            Err(e) => return Err(Error::Internal(format!("waiting for the child: {e}"))),
        }
        tokio::select! {
            _ = child_exited.recv() => {}
            Some(sig) = rx.recv() => forward(pid, sig),
        }
    }
}

fn forward(pid: Pid, sig: Signal) {
    if sig == Signal::SIGINT && child_got_it_from_terminal() {
        tracing::debug!(
            "SIGINT came from the terminal to the whole foreground group; not forwarded"
        );
        return;
    }
    tracing::debug!(signal = %sig, pid = pid.as_raw(), "forwarding");
    if let Err(e) = kill(pid, sig) {
        // ESRCH: the child is already gone; its exit is about to be reaped.
        tracing::debug!(signal = %sig, error = %e, "forwarding failed");
    }
}

/// The terminal sends SIGINT to its whole foreground process group, which the child shares with
/// secret-run when stdin is that terminal and secret-run is in the foreground.
fn child_got_it_from_terminal() -> bool {
    let stdin = std::io::stdin();
    nix::unistd::isatty(&stdin).unwrap_or(false)
        && nix::unistd::tcgetpgrp(&stdin).is_ok_and(|fg| fg == nix::unistd::getpgrp())
}
