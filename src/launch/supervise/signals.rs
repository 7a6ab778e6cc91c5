//! The signal source: handlers for every signal the supervisor forwards or reloads on, and
//! SIGCHLD, installed before the first resolve so that no signal is lost or ends secret-run by
//! its default action while a provider runs or before the child exists.

use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::policy::STOPPING;
use crate::error::{Error, Result};
use crate::manifest::plan::Plan;

/// Forwarded as they are, unless one of them is the reload signal.
const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGHUP,
    Signal::SIGINT,
];

/// What the handlers report.
#[derive(Debug)]
pub enum Notice {
    Signal(Signal),
    /// Some child changed state (SIGCHLD): time to reap.
    ChildChanged,
}

/// The signal handlers, installed before the first resolve and handed to the supervisor.
#[derive(Debug)]
pub struct Signals {
    pub(super) notices: mpsc::UnboundedReceiver<Notice>,
}

impl Signals {
    /// Installs a handler for every signal the supervisor forwards or reloads on, and SIGCHLD.
    pub fn install(plan: &Plan) -> Result<Signals> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut wanted: Vec<Signal> = FORWARDED.to_vec();
        if !wanted.contains(&plan.run.reload_signal) {
            wanted.push(plan.run.reload_signal);
        }
        for sig in wanted {
            let mut stream = signal(SignalKind::from_raw(sig as i32))
                .map_err(Error::os("install a signal handler"))?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(Notice::Signal(sig)).is_err() {
                        break;
                    }
                }
            });
        }
        let mut sigchld =
            signal(SignalKind::child()).map_err(Error::os("install a handler for SIGCHLD"))?;
        tokio::spawn(async move {
            while sigchld.recv().await.is_some() {
                if tx.send(Notice::ChildChanged).is_err() {
                    break;
                }
            }
        });
        Ok(Signals { notices: rx })
    }

    /// Runs the first resolve while listening: a stop signal abandons it (its providers are
    /// killed when it is dropped) and gives `Error::Interrupted`; the reload signal is
    /// remembered (the values being read may predate the rotation it announces); the others
    /// have no child to go to yet.
    pub async fn during_start<F: std::future::Future>(
        &mut self,
        work: F,
        plan: &Plan,
    ) -> Result<(F::Output, bool)> {
        tokio::pin!(work);
        let mut reload_asked = false;
        loop {
            tokio::select! {
                out = &mut work => return Ok((out, reload_asked)),
                Some(notice) = self.notices.recv() => match notice {
                    Notice::Signal(sig) if STOPPING.contains(&sig) => {
                        tracing::info!(signal = %sig, "stopped before the command started");
                        return Err(Error::Interrupted(sig));
                    }
                    Notice::Signal(sig) if sig == plan.run.reload_signal => reload_asked = true,
                    Notice::Signal(sig) => {
                        tracing::debug!(signal = %sig, "no command yet to forward it to");
                    }
                    Notice::ChildChanged => {}
                },
            }
        }
    }
}
