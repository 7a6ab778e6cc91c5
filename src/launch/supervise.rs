//! Supervise mode (the default): secret-run stays the child's parent. It forwards the signals a
//! service manager or a container runtime sends, reaps zombies (all of them as PID 1 or with
//! `--subreaper`), reloads the secrets on the reload signal or when `watch` finds a rotation, and
//! exits with the child's code (128 + N when signal N killed it).
//!
//! One task owns all the state and handles one event at a time, so there is no moment with two
//! children except during an `overlap` hand-over. Signal handlers are installed before the first
//! child is spawned: a signal that arrives in between is not lost, nor does it kill secret-run
//! and orphan the child. SIGINT is not forwarded when the child already got it from the
//! terminal: both are in the terminal's foreground process group.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::process::CommandExt;
use std::time::Duration;

use std::os::fd::AsFd;

use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use secrecy::ExposeSecret;
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Target;
use super::exec::spawn_error;
use super::exit::code_of;
use crate::audit::Audit;
use crate::error::{Error, Result};
use crate::manifest::plan::Plan;
use crate::manifest::run::{OnChange, Restart, RestartOnExit};
use crate::resolve::{self, ResolvedVar};

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

/// Signals after which secret-run only waits for the child to end: no more restarts.
const STOPPING: &[Signal] = &[Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT];

/// Reload attempts that change nothing are still spaced by this much (or by
/// `min_restart_interval` when it is shorter).
const MIN_RELOAD_GAP: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_CAP: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Reap the orphans of the child too (PR_SET_CHILD_SUBREAPER); implied as PID 1.
    pub subreaper: bool,
    /// Run the child in its own process group and signal the group.
    pub process_group: bool,
}

#[derive(Debug)]
enum Event {
    Signal(Signal),
    ChildExited,
}

#[derive(Debug)]
pub struct Supervisor<'a> {
    plan: &'a Plan,
    target: &'a Target,
    timeout: Duration,
    opts: Options,
    audit: Audit,
    /// The values the running child has: what a reload compares against.
    values: Vec<ResolvedVar>,
    /// When a backend last confirmed the values (for `max_stale`).
    confirmed: Instant,
    child: Option<Child>,
    /// Children being stopped or tried out (overlap), and their exits once reaped.
    others: HashSet<Pid>,
    exited: HashMap<Pid, u8>,
    events: mpsc::UnboundedReceiver<Event>,
    pending: Option<&'static str>,
    stopping: bool,
    finished: Option<u8>,
    /// The runtime has children of its own right now (see `race_runtime_children`).
    runtime_children: bool,
    reap_all: bool,
    /// The newest child was made the terminal's foreground group (`--process-group`).
    gave_terminal: bool,
    last_restart: Option<Instant>,
    last_reload: Option<Instant>,
    restart_due: Option<Instant>,
    failures: u32,
    last_code: u8,
}

#[derive(Debug, Clone, Copy)]
struct Child {
    pid: Pid,
    started: Instant,
}

/// The signal handlers, installed before the first resolve and handed to the supervisor.
#[derive(Debug)]
pub struct Signals {
    events: mpsc::UnboundedReceiver<Event>,
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
                .map_err(|e| Error::Internal(format!("cannot install a handler for {sig}: {e}")))?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(Event::Signal(sig)).is_err() {
                        break;
                    }
                }
            });
        }
        let mut sigchld = signal(SignalKind::child())
            .map_err(|e| Error::Internal(format!("cannot install a handler for SIGCHLD: {e}")))?;
        tokio::spawn(async move {
            while sigchld.recv().await.is_some() {
                if tx.send(Event::ChildExited).is_err() {
                    break;
                }
            }
        });
        Ok(Signals { events: rx })
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
                Some(ev) = self.events.recv() => match ev {
                    Event::Signal(sig) if STOPPING.contains(&sig) => {
                        tracing::info!(signal = %sig, "stopped before the command started");
                        return Err(Error::Interrupted(sig));
                    }
                    Event::Signal(sig) if sig == plan.run.reload_signal => reload_asked = true,
                    Event::Signal(sig) => {
                        tracing::debug!(signal = %sig, "no command yet to forward it to");
                    }
                    Event::ChildExited => {}
                },
            }
        }
    }
}

/// What the first resolve hands to the supervisor.
#[derive(Debug)]
pub struct Start {
    pub values: Vec<ResolvedVar>,
    pub audit: Audit,
    pub signals: Signals,
    /// The reload signal arrived during the first resolve: reload once the child runs.
    pub reload_asked: bool,
}

impl<'a> Supervisor<'a> {
    /// Takes over the signal handlers; the child is started by `run`.
    pub fn new(
        plan: &'a Plan,
        target: &'a Target,
        start: Start,
        timeout: Duration,
        opts: Options,
    ) -> Result<Supervisor<'a>> {
        let pid1 = nix::unistd::getpid().as_raw() == 1;
        if opts.subreaper && !pid1 {
            nix::sys::prctl::set_child_subreaper(true)
                .map_err(|e| Error::Internal(format!("cannot become a subreaper: {e}")))?;
        }
        let mut audit = start.audit;
        audit.in_background();
        Ok(Supervisor {
            plan,
            target,
            timeout,
            opts,
            audit,
            values: start.values,
            confirmed: Instant::now(),
            child: None,
            others: HashSet::new(),
            exited: HashMap::new(),
            events: start.signals.events,
            pending: start.reload_asked.then_some("signal"),
            stopping: false,
            finished: None,
            runtime_children: false,
            reap_all: pid1 || opts.subreaper,
            gave_terminal: false,
            last_restart: None,
            last_reload: None,
            restart_due: None,
            failures: 0,
            last_code: 0,
        })
    }

    pub async fn run(mut self) -> Result<u8> {
        let pid = self.spawn()?;
        self.child = Some(Child {
            pid,
            started: Instant::now(),
        });
        let mut next_watch = self.plan.run.watch.map(|d| Instant::now() + splay(d));
        loop {
            if let Some(code) = self.finished {
                return Ok(code);
            }
            if self.child.is_none() && self.restart_due.is_none() {
                // Nothing left to run or wait for (a restart that could not start).
                return Ok(self.last_code);
            }
            let reload_at = match self.pending {
                Some(_) if !self.stopping && self.child.is_some() => Some(self.reload_allowed_at()),
                _ => None,
            };
            let restart_at = self.restart_due.filter(|_| !self.stopping);
            tokio::select! {
                Some(ev) = self.events.recv() => self.on_event(ev),
                () = sleep_until_opt(reload_at) => {
                    let trigger = self.pending.take().unwrap_or("signal");
                    self.reload(trigger).await;
                }
                () = sleep_until_opt(next_watch), if self.child.is_some() => {
                    tracing::debug!("watch: checking the backends for a rotation");
                    self.pending.get_or_insert("watch");
                    next_watch = self.plan.run.watch.map(|d| Instant::now() + splay(d));
                }
                () = sleep_until_opt(restart_at) => {
                    self.restart_due = None;
                    self.restart_after_exit().await;
                }
            }
        }
    }

    fn reload_allowed_at(&self) -> Instant {
        let after_restart = self
            .last_restart
            .map(|t| t + self.plan.run.min_restart_interval);
        let gap = MIN_RELOAD_GAP.min(self.plan.run.min_restart_interval);
        let after_reload = self.last_reload.map(|t| t + gap);
        [after_restart, after_reload]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or_else(Instant::now)
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::ChildExited => self.reap(),
            Event::Signal(sig) if sig == self.plan.run.reload_signal && !self.stopping => {
                if self.pending.is_none() {
                    tracing::info!(signal = %sig, "reload requested");
                } else {
                    tracing::debug!(signal = %sig, "reload already pending; coalesced");
                }
                self.pending = Some("signal");
            }
            Event::Signal(sig) => {
                if STOPPING.contains(&sig) {
                    self.stopping = true;
                    self.pending = None;
                    self.restart_due = None;
                    if self.child.is_none() && self.others.is_empty() {
                        // Between a crash and its restart: nothing to stop, so stop here.
                        self.finished = Some(self.last_code);
                    }
                }
                for pid in self.live_pids() {
                    self.forward(pid, sig);
                }
            }
        }
    }

    /// Collects every exit that is ours to collect. While the runtime has children of its own,
    /// only known ones are reaped: a provider program or a readiness check is the runtime's.
    fn reap(&mut self) {
        let mut ended: Vec<(Pid, u8)> = Vec::new();
        let mut stopped = None;
        // WUNTRACED: a child stopped by the terminal (Ctrl-Z, or reading it from the
        // background) is reported too, so that secret-run can stop with it (`child_stopped`).
        let flags = Some(WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED);
        let mut note = |status: WaitStatus| match status {
            WaitStatus::Stopped(pid, _) => stopped = Some(pid),
            status => {
                if let (Some(pid), Some(code)) = (status.pid(), code_of(status)) {
                    ended.push((pid, code));
                }
            }
        };
        if self.reap_all && !self.runtime_children {
            loop {
                match waitpid(Pid::from_raw(-1), flags) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(status) => note(status),
                }
            }
        } else {
            for pid in self.live_pids() {
                if let Ok(status) = waitpid(pid, flags) {
                    note(status);
                }
            }
        }
        for (pid, code) in ended {
            if self.child.is_some_and(|c| c.pid == pid) {
                self.child_ended(code);
            } else if self.others.remove(&pid) {
                self.exited.insert(pid, code);
            } else {
                tracing::debug!(pid = pid.as_raw(), code, "reaped an orphan");
            }
        }
        if let Some(pid) = stopped.filter(|p| self.child.is_some_and(|c| c.pid == *p)) {
            self.child_stopped(pid);
        }
    }

    /// The child (in a group of its own, holding the terminal) was stopped: Ctrl-Z. The shell
    /// only knows secret-run as the job, so secret-run takes the terminal back and stops too;
    /// `fg` continues it, and it hands the terminal and the SIGCONT on to the child.
    fn child_stopped(&mut self, pid: Pid) {
        if !self.gave_terminal {
            return;
        }
        tracing::debug!(
            pid = pid.as_raw(),
            "the child was stopped from the terminal; stopping too"
        );
        let hand_over = |pgrp| {
            if let Err(e) = give_terminal(std::io::stdin(), pgrp) {
                tracing::debug!(error = %e, "cannot hand the terminal over");
            }
        };
        hand_over(nix::unistd::getpgrp());
        let _ = kill(nix::unistd::getpid(), Signal::SIGSTOP);
        // Continued.
        hand_over(pid);
        let _ = kill(self.signal_target(pid), Signal::SIGCONT);
    }

    /// The child, and the children being stopped or tried out.
    fn live_pids(&self) -> Vec<Pid> {
        self.child
            .map(|c| c.pid)
            .into_iter()
            .chain(self.others.iter().copied())
            .collect()
    }

    fn child_ended(&mut self, code: u8) {
        let Some(child) = self.child.take() else {
            return;
        };
        self.last_code = code;
        tracing::debug!(pid = child.pid.as_raw(), code, "child ended");
        self.audit.event("exit", exit_fields(child.pid, code));
        let failed = code != 0;
        if self.stopping || !failed || self.plan.run.restart_on_exit == RestartOnExit::Never {
            self.finished = Some(code);
            return;
        }
        if child.started.elapsed() > Duration::from_secs(60) {
            self.failures = 0;
        }
        self.failures += 1;
        let pause = backoff(self.failures);
        tracing::warn!(
            code,
            restart_in_s = pause.as_secs(),
            "the child failed; restarting (restart_on_exit = on-failure)"
        );
        self.restart_due = Some(Instant::now() + pause);
    }

    fn forward(&self, pid: Pid, sig: Signal) {
        if sig == Signal::SIGINT && !self.opts.process_group && child_got_it_from_terminal() {
            tracing::debug!(
                "SIGINT came from the terminal to the whole foreground group; not forwarded"
            );
            return;
        }
        tracing::debug!(signal = %sig, pid = pid.as_raw(), "forwarding");
        if let Err(e) = kill(self.signal_target(pid), sig) {
            // ESRCH: the child is already gone; its exit is about to be reaped.
            tracing::debug!(signal = %sig, error = %e, "forwarding failed");
        }
    }

    fn signal_target(&self, pid: Pid) -> Pid {
        if self.opts.process_group {
            Pid::from_raw(-pid.as_raw())
        } else {
            pid
        }
    }

    /// Polls `fut` while still handling events. `None` when the run finished meanwhile.
    async fn race<F: std::future::Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Some(out),
                Some(ev) = self.events.recv() => {
                    self.on_event(ev);
                    if self.finished.is_some() {
                        return None;
                    }
                }
            }
        }
    }

    /// `race` for work that starts processes of the runtime's own (a `command` provider, a
    /// readiness program): waitpid(-1) stays off them while it runs, and the exits it left for
    /// later are collected after.
    async fn race_runtime_children<F: std::future::Future>(&mut self, fut: F) -> Option<F::Output> {
        self.runtime_children = true;
        let out = self.race(fut).await;
        self.runtime_children = false;
        self.reap();
        out
    }

    /// Resolves every secret again while the child keeps running.
    async fn resolve(&mut self) -> Option<resolve::Resolution> {
        let plan = self.plan;
        let timeout = self.timeout;
        self.race_runtime_children(resolve::resolve(plan, timeout))
            .await
    }

    async fn reload(&mut self, trigger: &'static str) {
        tracing::debug!(trigger, "reloading");
        let resolution = self.resolve().await;
        self.last_reload = Some(Instant::now());
        let Some(resolution) = resolution else { return };
        if self.stopping || self.child.is_none() {
            return;
        }
        self.audit.resolve(trigger, &resolution.vars);
        let vars = match resolution.into_complete() {
            Ok(vars) => vars,
            Err(failure) => {
                tracing::warn!(
                    "reload failed; the child keeps running with the values it has:\n{failure}"
                );
                let age = self.confirmed.elapsed();
                self.audit.event(
                    "reload",
                    with_fields(
                        crate::audit::failure(&failure),
                        json!({ "trigger": trigger, "outcome": "failed", "values_age_s": age.as_secs() }),
                    ),
                );
                if age > self.plan.run.max_stale {
                    tracing::error!(
                        age_s = age.as_secs(),
                        max_stale_s = self.plan.run.max_stale.as_secs(),
                        "the running child's secrets were last confirmed longer ago than max_stale"
                    );
                }
                return;
            }
        };
        self.confirmed = Instant::now();
        let changed = changed(&self.values, &vars);
        let names: Vec<&str> = changed.iter().map(String::as_str).collect();
        let outcome = if changed.is_empty() {
            "unchanged"
        } else {
            "changed"
        };
        self.audit.event(
            "reload",
            json!({ "trigger": trigger, "outcome": outcome, "changed": names }),
        );
        if changed.is_empty() && self.plan.run.restart == Restart::OnChange {
            tracing::info!("reload: no secret changed; nothing restarted");
            self.values = vars;
            return;
        }
        tracing::info!(changed = %names.join(", "), policy = ?self.plan.run.on_change, "reload: applying new values");
        match self.plan.run.on_change {
            OnChange::Restart => {
                self.values = vars;
                self.restart().await;
            }
            OnChange::Signal => {
                self.values = vars;
                if let Some(child) = self.child {
                    let sig = self.plan.run.child_signal;
                    if let Err(e) = kill(self.signal_target(child.pid), sig) {
                        tracing::warn!(error = %e, "cannot signal the child");
                    }
                    self.audit.event(
                        "signal",
                        json!({ "pid": child.pid.as_raw(), "signal": sig.as_str() }),
                    );
                }
            }
            OnChange::Overlap => self.overlap(vars).await,
        }
        self.last_restart = Some(Instant::now());
    }

    /// Stop the child, then start a new one with the current values.
    async fn restart(&mut self) {
        let Some(old) = self.child.take() else { return };
        self.others.insert(old.pid);
        let code = self.stop(old.pid).await;
        self.audit.event("stop", exit_fields(old.pid, code));
        if self.stopping || self.finished.is_some() {
            self.finished.get_or_insert(code);
            return;
        }
        match self.spawn() {
            Ok(pid) => {
                self.child = Some(Child {
                    pid,
                    started: Instant::now(),
                });
                self.audit.event(
                    "restart",
                    json!({ "old_pid": old.pid.as_raw(), "pid": pid.as_raw() }),
                );
            }
            Err(e) => {
                tracing::error!("cannot start the new child: {e}");
                self.finished = Some(e.exit_code());
            }
        }
    }

    /// Start the new child first; once it is ready, stop the old one. If it never becomes
    /// ready, stop it and keep the old one (and its values: the next reload tries again).
    async fn overlap(&mut self, vars: Vec<ResolvedVar>) {
        let Some(old) = self.child else { return };
        let previous = std::mem::replace(&mut self.values, vars);
        let new = match self.spawn() {
            Ok(pid) => pid,
            Err(e) => {
                tracing::error!("cannot start the new child: {e}; the old one keeps running");
                self.values = previous;
                return;
            }
        };
        self.others.insert(new);
        self.audit.event(
            "overlap-start",
            json!({ "old_pid": old.pid.as_raw(), "pid": new.as_raw() }),
        );
        let ready = self.wait_ready(new).await;
        if self.finished.is_some() {
            return;
        }
        if ready && !self.stopping {
            self.others.remove(&new);
            self.child = Some(Child {
                pid: new,
                started: Instant::now(),
            });
            self.others.insert(old.pid);
            let code = self.stop(old.pid).await;
            self.audit.event("stop", exit_fields(old.pid, code));
            self.audit.event(
                "overlap",
                json!({ "old_pid": old.pid.as_raw(), "pid": new.as_raw() }),
            );
        } else {
            tracing::warn!(
                pid = new.as_raw(),
                "the new child did not become ready; it is stopped and the old one keeps running"
            );
            let code = self.stop(new).await;
            self.audit.event("overlap-failed", exit_fields(new, code));
            self.values = previous;
        }
    }

    async fn wait_ready(&mut self, pid: Pid) -> bool {
        let Some(ready) = self.plan.run.ready.clone() else {
            return true;
        };
        let until = Instant::now() + ready.timeout;
        while Instant::now() < until {
            if self.exited.contains_key(&pid) || !self.others.contains(&pid) {
                return false;
            }
            let attempt = async {
                if let Some(addr) = &ready.tcp {
                    matches!(
                        tokio::time::timeout(
                            Duration::from_secs(1),
                            tokio::net::TcpStream::connect(addr.as_str())
                        )
                        .await,
                        Ok(Ok(_))
                    )
                } else if let Some(argv) = &ready.cmd {
                    let status = tokio::process::Command::new(&argv[0])
                        .args(&argv[1..])
                        .stdin(std::process::Stdio::null())
                        .kill_on_drop(true)
                        .status();
                    matches!(tokio::time::timeout(Duration::from_secs(5), status).await, Ok(Ok(s)) if s.success())
                } else {
                    true
                }
            };
            match self.race_runtime_children(attempt).await {
                None => return false,
                Some(true) => return true,
                Some(false) => {}
            }
            let pause = tokio::time::sleep(Duration::from_millis(100));
            if self.race(pause).await.is_none() {
                return false;
            }
        }
        false
    }

    /// Sends the stop signal, waits `stop_timeout`, then SIGKILL; returns the exit code.
    async fn stop(&mut self, pid: Pid) -> u8 {
        let sig = self.plan.run.stop_signal;
        tracing::debug!(pid = pid.as_raw(), signal = %sig, "stopping the child");
        let _ = kill(self.signal_target(pid), sig);
        let grace = Instant::now() + self.plan.run.stop_timeout;
        let mut killed = false;
        loop {
            if let Some(code) = self.exited.remove(&pid) {
                return code;
            }
            if !self.others.contains(&pid) {
                // Reaped as someone else's (cannot happen) or never ours: do not wait forever.
                return self.last_code;
            }
            tokio::select! {
                Some(ev) = self.events.recv() => self.on_event(ev),
                () = tokio::time::sleep_until(grace), if !killed => {
                    tracing::warn!(pid = pid.as_raw(), "the child did not stop within stop_timeout; SIGKILL");
                    let _ = kill(self.signal_target(pid), Signal::SIGKILL);
                    killed = true;
                }
            }
        }
    }

    /// After the child failed (`restart_on_exit = "on-failure"`): fresh values if the backends
    /// answer, else the last-known-good ones while they are younger than `max_stale`.
    async fn restart_after_exit(&mut self) {
        let Some(resolution) = self.resolve().await else {
            return;
        };
        if self.stopping {
            self.finished = Some(self.last_code);
            return;
        }
        self.audit.resolve("restart", &resolution.vars);
        match resolution.into_complete() {
            Ok(vars) => {
                self.values = vars;
                self.confirmed = Instant::now();
            }
            Err(failure) => {
                let age = self.confirmed.elapsed();
                if age > self.plan.run.max_stale {
                    tracing::error!(
                        age_s = age.as_secs(),
                        max_stale_s = self.plan.run.max_stale.as_secs(),
                        "NOT restarting: the backends cannot be reached and the last-known-good values are older than max_stale:\n{failure}"
                    );
                    self.audit.event(
                        "stale-refused",
                        with_fields(
                            crate::audit::failure(&failure),
                            json!({ "values_age_s": age.as_secs() }),
                        ),
                    );
                    self.failures += 1;
                    self.restart_due = Some(Instant::now() + backoff(self.failures));
                    return;
                }
                tracing::warn!(
                    age_s = age.as_secs(),
                    "the backends cannot be reached; restarting with the last-known-good values:\n{failure}"
                );
                self.audit.event(
                    "stale-serve",
                    with_fields(
                        crate::audit::failure(&failure),
                        json!({ "values_age_s": age.as_secs() }),
                    ),
                );
            }
        }
        match self.spawn() {
            Ok(pid) => {
                self.child = Some(Child {
                    pid,
                    started: Instant::now(),
                });
            }
            Err(e) => {
                tracing::error!("cannot restart the child: {e}");
                self.finished = Some(e.exit_code());
            }
        }
    }

    /// Starts a child with the current values. It dies with secret-run (PR_SET_PDEATHSIG), so
    /// a SIGKILLed supervisor leaves no orphan holding secrets.
    fn spawn(&mut self) -> Result<Pid> {
        let mut cmd = super::child_command(
            self.target,
            &self.plan.env,
            &self.values,
            &self.plan.consumed_env(),
        );
        if self.opts.process_group {
            cmd.process_group(0);
        }
        // In a group of its own the child is not in the terminal's foreground: reading the
        // terminal would stop it (SIGTTIN) for good. It gets the foreground, as a shell gives
        // a job; the descriptor is duplicated here, since nothing may be allocated after fork.
        let terminal = if self.opts.process_group && child_got_it_from_terminal() {
            std::io::stdin().as_fd().try_clone_to_owned().ok()
        } else {
            None
        };
        self.gave_terminal = terminal.is_some();
        let parent = nix::unistd::getpid();
        // SAFETY: between fork and exec the closure only makes async-signal-safe system calls
        // (prctl, getppid, setrlimit, sigprocmask, tcsetpgrp) and allocates nothing.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || {
                crate::protect::restore_core_limit().map_err(std::io::Error::from)?;
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                // The parent may have died before the line above: then nobody would kill us.
                if nix::unistd::getppid() != parent {
                    // From an error kind: `io::Error::other` would allocate after fork.
                    return Err(std::io::ErrorKind::Other.into());
                }
                if let Some(tty) = &terminal {
                    let _ = give_terminal(tty, nix::unistd::getpid());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| spawn_error(self.target, &e))?;
        // The command holds a copy of the environment, values included: let it go now.
        drop(cmd);
        let pid = Pid::from_raw(child.id() as i32);
        // Reaped with waitpid like every other child; std's handle is not needed.
        drop(child);
        tracing::debug!(pid = pid.as_raw(), program = %self.target.path.display(), "child started");
        self.audit.event("start", json!({ "pid": pid.as_raw() }));
        Ok(pid)
    }
}

/// The names of the variables whose value (or presence) differs.
fn changed(old: &[ResolvedVar], new: &[ResolvedVar]) -> Vec<String> {
    // Compared in place: no copy of a value is made.
    fn value(v: &ResolvedVar) -> Option<&str> {
        v.value().map(|s| s.expose_secret())
    }
    let before: BTreeMap<&str, Option<&str>> =
        old.iter().map(|v| (v.name.as_str(), value(v))).collect();
    let after: BTreeMap<&str, Option<&str>> =
        new.iter().map(|v| (v.name.as_str(), value(v))).collect();
    let mut names: Vec<String> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, _)| (*k).to_owned())
        .collect();
    names.extend(
        before
            .keys()
            .filter(|k| !after.contains_key(*k))
            .map(|k| (*k).to_owned()),
    );
    names
}

/// `base` with the fields of `more` added (both JSON objects).
fn with_fields(mut base: serde_json::Value, more: serde_json::Value) -> serde_json::Value {
    if let (Some(b), serde_json::Value::Object(m)) = (base.as_object_mut(), more) {
        b.extend(m);
    }
    base
}

fn exit_fields(pid: Pid, code: u8) -> serde_json::Value {
    if code > 128 {
        let sig = Signal::try_from(i32::from(code - 128)).map_or("?", Signal::as_str);
        json!({ "pid": pid.as_raw(), "code": code, "signal": sig })
    } else {
        json!({ "pid": pid.as_raw(), "code": code })
    }
}

/// 1 s, 2 s, 4 s … up to 30 s between restarts of a failing child.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1)
        .saturating_mul(1 << failures.saturating_sub(1).min(5))
        .min(RESTART_BACKOFF_CAP)
}

/// ±10% around `d`, so that a fleet started together does not poll in step.
fn splay(d: Duration) -> Duration {
    d.mul_f64(0.9 + 0.2 * fastrand::f64())
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Makes `pgrp` the foreground group of the terminal `tty`, with SIGTTOU blocked meanwhile: from
/// a background group (the child before its exec, secret-run taking the terminal back),
/// tcsetpgrp would stop the caller. Async-signal-safe: system calls only, nothing allocated.
fn give_terminal(tty: impl AsFd, pgrp: Pid) -> nix::Result<()> {
    let mut ttou = SigSet::empty();
    ttou.add(Signal::SIGTTOU);
    let _ = ttou.thread_block();
    let given = nix::unistd::tcsetpgrp(tty, pgrp);
    let _ = ttou.thread_unblock();
    given
}

/// The terminal sends SIGINT to its whole foreground process group, which the child shares with
/// secret-run when stdin is that terminal and secret-run is in the foreground.
fn child_got_it_from_terminal() -> bool {
    let stdin = std::io::stdin();
    nix::unistd::isatty(&stdin).unwrap_or(false)
        && nix::unistd::tcgetpgrp(&stdin).is_ok_and(|fg| fg == nix::unistd::getpgrp())
}
