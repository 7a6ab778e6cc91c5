//! `[run] pidfile`: the supervisor's PID in the file, and in `PIDFILE.status` what its reloads
//! came to: how many have completed and how the last ended (`applied`: the new values reached
//! the child, by restart, signal or a new child taken — with `ready`, a restarted child once it
//! is ready; `unchanged`; `failed`: the resolve failed; `not-taken`: an overlap's new child was
//! not ready; `not-ready`: a restarted child was not ready within `ready.timeout`; `exited`:
//! the child ended by itself during the hand-over).
//! `secret-run rotate` signals the PID and waits for the count to move. Both files are removed
//! when secret-run exits.

use std::path::PathBuf;

use crate::audit::{Event, ReloadOutcome};

#[derive(Debug)]
pub struct Status {
    pidfile: PathBuf,
    file: PathBuf,
    reloads: u64,
    /// A reload changed values and the hand-over is not over yet.
    changing: bool,
    child: Option<i32>,
    /// A restart's hand-over ends when the new child is ready (`ready` with `restart`).
    restart_waits_ready: bool,
}

/// `PIDFILE.status`.
pub fn status_path(pidfile: &std::path::Path) -> PathBuf {
    let mut name = pidfile.as_os_str().to_owned();
    name.push(".status");
    PathBuf::from(name)
}

impl Status {
    pub fn open(
        pidfile: &std::path::Path,
        restart_waits_ready: bool,
    ) -> crate::error::Result<Status> {
        let status = Status {
            pidfile: pidfile.to_path_buf(),
            file: status_path(pidfile),
            reloads: 0,
            changing: false,
            child: None,
            restart_waits_ready,
        };
        crate::fsread::write_atomically(
            pidfile,
            format!("{}\n", std::process::id()).as_bytes(),
            0o644,
        )
        .map_err(|source| crate::error::Error::Write {
            path: pidfile.to_path_buf(),
            source,
        })?;
        status.write("started");
        Ok(status)
    }

    /// Follows the policy's records: a reload is done when it changed nothing, failed, or its
    /// hand-over ended.
    pub fn observe(&mut self, event: &Event) {
        let done = match event {
            Event::Start { pid } => {
                self.child = Some(*pid);
                None
            }
            Event::Reload { outcome, .. } => match outcome {
                ReloadOutcome::Unchanged => Some("unchanged"),
                ReloadOutcome::Failed { .. } => Some("failed"),
                ReloadOutcome::Changed(_) => {
                    self.changing = true;
                    None
                }
            },
            Event::Restart { pid, .. } if self.changing && self.restart_waits_ready => {
                self.child = Some(*pid);
                None
            }
            Event::Restart { pid, .. }
            | Event::Ready { pid }
            | Event::Overlap { pid, .. }
            | Event::Signal { pid, .. }
                if self.changing =>
            {
                self.child = Some(*pid);
                Some("applied")
            }
            Event::OverlapFailed { .. } if self.changing => Some("not-taken"),
            Event::NotReady { .. } if self.changing => Some("not-ready"),
            // The child ended by itself before the new values reached it (or it was ready).
            Event::Exit { .. } if self.changing => Some("exited"),
            _ => None,
        };
        if let Some(last) = done {
            self.changing = false;
            self.reloads += 1;
            self.write(last);
        }
    }

    fn write(&self, last: &str) {
        let text = serde_json::json!({
            "pid": std::process::id(),
            "reloads": self.reloads,
            "last": last,
            "child": self.child,
        })
        .to_string();
        if let Err(e) = crate::fsread::write_atomically(&self.file, text.as_bytes(), 0o644) {
            tracing::warn!("cannot write {}: {e}", self.file.display());
        }
    }
}

impl Drop for Status {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_file(&self.pidfile);
    }
}
