//! Keeping values out of other processes' reach: secret-run makes itself non-dumpable and
//! core-less before it reads anything, and gives the command back the core limit it had.
//!
//! Non-dumpable (`PR_SET_DUMPABLE 0`): `/proc/<pid>/mem`, `environ` and the rest belong to root,
//! so another process of the same user cannot read the values secret-run holds, nor attach a
//! debugger. `RLIMIT_CORE` 0: a crash writes no core file with values in it. The command itself
//! is not affected: execve makes it dumpable again, and it gets the core limit secret-run found.

use std::sync::OnceLock;

use crate::error::Error;
use nix::sys::resource::{Resource, getrlimit, rlim_t, setrlimit};

/// The core-file limits secret-run started with, for the command.
static CORE_LIMIT: OnceLock<(rlim_t, rlim_t)> = OnceLock::new();

/// Called first thing in `main`, before the manifest names a single secret.
pub fn lock_down() -> Result<(), Error> {
    nix::sys::prctl::set_dumpable(false)
        .map_err(Error::os("make secret-run non-dumpable (PR_SET_DUMPABLE)"))?;
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_CORE).map_err(Error::os("read the core-file limit"))?;
    let _ = CORE_LIMIT.set((soft, hard));
    // Only the soft limit: the hard one stays, so that the command can have its own back.
    setrlimit(Resource::RLIMIT_CORE, 0, hard)
        .map_err(Error::os("turn off core files (RLIMIT_CORE)"))
}

/// Gives the process the core limit secret-run started with: for the command, just before its
/// execve (async-signal-safe: one system call, no allocation, usable after fork).
pub fn restore_core_limit() -> nix::Result<()> {
    match CORE_LIMIT.get() {
        Some(&(soft, hard)) => setrlimit(Resource::RLIMIT_CORE, soft, hard),
        None => Ok(()),
    }
}
