//! Signals that arrive while secret-run resolves before a command exists (`--exec`, `check`).
//!
//! Without this, a SIGTERM during the resolve ends secret-run by the default action: no audit
//! record, and a provider program keeps running. The terminating signals are blocked from the
//! start and read from a signalfd instead, so that the resolve can be abandoned, its providers
//! killed, the record written, and secret-run exit with 128 + N as if the signal had ended it.
//! (Supervise mode installs its own handlers, which forward to the child: see `supervise`.)

use std::os::fd::{AsFd, BorrowedFd};

use crate::error::Error;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// The signals whose default action would end secret-run mid-resolve.
pub const TERMINATING: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The terminating signals, blocked and readable on a descriptor until this is dropped.
/// Create it on the main thread before any other thread exists: threads inherit the mask.
#[derive(Debug)]
pub struct Interrupts {
    fd: SignalFd,
    previous: SigSet,
}

impl Interrupts {
    pub fn block() -> Result<Interrupts, Error> {
        let mut set = SigSet::empty();
        TERMINATING.iter().for_each(|s| set.add(*s));
        let previous = set
            .thread_swap_mask(SigmaskHow::SIG_BLOCK)
            .map_err(Error::os("block signals during the resolve"))?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(Error::os("read signals during the resolve (signalfd)"))?;
        Ok(Interrupts { fd, previous })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The first signal that arrived, if any (never waits).
    pub fn take(&self) -> Option<Signal> {
        match self.fd.read_signal() {
            Ok(Some(info)) => Signal::try_from(info.ssi_signo as i32).ok(),
            _ => None,
        }
    }
}

impl Drop for Interrupts {
    /// Gives the thread its mask back: the command must not inherit blocked signals.
    fn drop(&mut self) {
        let _ = self.previous.thread_set_mask();
    }
}
