//! The supervisor's decisions, as a state machine with no processes, signals or clock of its
//! own. Inputs come in (a signal, a child's exit, a spawn's result, a resolve's result, a
//! readiness answer, time passing), each with the time it happened; actions come out (spawn,
//! forward or send a signal, resolve, probe, audit). The driver in `mod.rs` turns the world
//! into inputs and actions into system calls; the unit tests below drive this file alone.
//!
//! One task runs at a time (a reload, a restart after a failure, a hand-over), and inputs keep
//! being handled while it runs: a stop signal during a reload is forwarded at once, a second
//! reload signal is coalesced into one pending reload. A run ends when its last child has
//! ended and no child being stopped is left.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use secrecy::ExposeSecret;

use super::notify::Tell;
use crate::audit::{Event, Failure, ReloadOutcome, Trigger, VarRecord};
use crate::manifest::run::{OnChange, Restart, RestartOnExit, RunConfig};
use crate::resolve::{Resolution, ResolvedVar};

/// Signals after which secret-run only waits for its children to end: no more restarts.
pub const STOPPING: &[Signal] = &[Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT];

/// Reload attempts that change nothing are still spaced by this much (or by
/// `min_restart_interval` when it is shorter).
const MIN_RELOAD_GAP: Duration = Duration::from_secs(1);
/// Between two readiness probes of a new child.
const PROBE_PAUSE: Duration = Duration::from_millis(100);
/// Between two requests for a restart slot when all are taken: at least the first, plus a
/// random part of the second, so that the replicas waiting do not ask in step.
const SLOT_RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(4));
/// A child that ran this long before failing starts the back-off over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub enum Input {
    /// A signal secret-run received.
    Signal(Signal),
    /// A child was reaped, with its exit code (128 + N when signal N killed it).
    Exited { pid: Pid, code: u8 },
    /// The answer to `Action::Spawn`.
    Spawned(Pid),
    /// `Action::Spawn` failed; `code` is the exit code that failure means.
    SpawnFailed { code: u8 },
    /// The answer to `Action::Resolve`.
    Resolved(Resolution),
    /// The answer to `Action::Probe`.
    Probed { pid: Pid, ready: bool },
    /// The child `pid` itself sent `READY=1` to its notify socket.
    Notified { pid: Pid },
    /// The issued credential `tag` must be replaced before it ends (it cannot be renewed,
    /// its maximum is near, or its renewal failed): reload, issuing it anew.
    Expiring(u64),
    /// The answer to `Action::Acquire`: a restart slot was had, or all were taken (or the
    /// backend could not be asked).
    Acquired(bool),
    /// Nothing but time: the deadline `next_deadline` gave has passed.
    Tick,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Start a child with `Policy::values`; answer with `Spawned` or `SpawnFailed` before
    /// anything else.
    Spawn,
    /// Pass on a signal secret-run received (unless the terminal already delivered it).
    Forward {
        pid: Pid,
        signal: Signal,
    },
    /// Send a signal of secret-run's own: the stop signal, SIGKILL, `child_signal`.
    Send {
        pid: Pid,
        signal: Signal,
    },
    /// Resolve every secret again; answer with `Resolved`.
    Resolve,
    /// Before a resolve that is not a `watch` tick: backends read afresh what they keep.
    Refresh,
    /// Take a restart slot (`max_concurrent_restarts`); answer with `Acquired`.
    Acquire,
    /// Give the restart slot back.
    ReleaseSlot,
    /// Ask once whether the new child is ready; answer with `Probed`.
    Probe(Pid),
    Audit(Event),
    /// Tell secret-run's own service manager (only when it has one).
    Tell(Tell),
    /// Write the files delivered from `Policy::values` again (those whose content changed).
    WriteFiles,
    /// No child uses these issued credentials any more, and none will: revoke them.
    Release(Vec<u64>),
}

#[derive(Debug, Clone, Copy)]
struct Child {
    pid: Pid,
    started: Instant,
}

/// Waiting for a child to be ready: by probes (`ready.tcp`, `ready.cmd`) or by its own
/// `READY=1` (`ready.notify`), until `until`.
#[derive(Debug, Clone, Copy)]
struct Readiness {
    pid: Pid,
    until: Instant,
    /// When to probe next; `None` while a probe runs, and always with `notify`.
    next_probe: Option<Instant>,
    probing: bool,
}

/// What became of a readiness wait at `now`.
enum Verdict {
    Waiting,
    Probe(Pid),
    TimedOut(Pid),
}

impl Readiness {
    fn due(&self) -> Option<Instant> {
        if self.probing {
            None
        } else {
            Some(self.next_probe.map_or(self.until, |p| p.min(self.until)))
        }
    }

    fn check(&mut self, now: Instant) -> Verdict {
        if self.probing {
            return Verdict::Waiting;
        }
        if now >= self.until {
            return Verdict::TimedOut(self.pid);
        }
        if self.next_probe.is_some_and(|p| p <= now) {
            self.next_probe = None;
            self.probing = true;
            return Verdict::Probe(self.pid);
        }
        Verdict::Waiting
    }
}

/// A child secret-run is stopping, and when it gets SIGKILL (`None` once sent).
#[derive(Debug)]
struct Ending {
    pid: Pid,
    kill_at: Option<Instant>,
}

/// What the supervisor is in the middle of.
#[derive(Debug)]
enum Task {
    Idle,
    /// A reload's resolve is out.
    Reloading(Trigger),
    /// The child failed (`restart_on_exit`): the resolve for its restart is out.
    Reviving,
    /// `on_change = "restart"`: the old child is being stopped; then the new one starts.
    Replacing {
        old: Pid,
    },
    /// `on_change = "restart"` with `ready`: the new child runs; the hand-over (and the
    /// restart slot) lasts until it is ready.
    Settling(Readiness),
    /// `on_change = "overlap"`: a new child runs beside the old one until it is ready.
    Trying {
        old: Pid,
        new: Option<Pid>,
        /// The old child's values, kept in case the new one is not taken.
        previous: Vec<ResolvedVar>,
        /// How far the new child is from ready (once it runs).
        readiness: Option<Readiness>,
    },
    /// The new child was ready and is the child now; the old one is being stopped.
    Retiring {
        old: Pid,
        new: Pid,
    },
    /// The new child was not taken and is being stopped; the old one keeps running.
    Discarding {
        new: Pid,
    },
    /// `restart_spread`: new values wait until `until`, the child runs on the old ones.
    Spreading {
        values: Vec<ResolvedVar>,
        until: Instant,
    },
    /// `max_concurrent_restarts`: new values wait for a restart slot (asked again at `retry`).
    Acquiring {
        values: Vec<ResolvedVar>,
        retry: Option<Instant>,
        told: bool,
    },
}

#[derive(Debug)]
pub struct Policy {
    run: RunConfig,
    /// What the next child gets, and what a reload compares against.
    values: Vec<ResolvedVar>,
    /// When a backend last confirmed the values (for `max_stale`).
    confirmed: Instant,
    child: Option<Child>,
    task: Task,
    ending: Vec<Ending>,
    /// A reload asked for and not started yet: several requests make one.
    pending: Option<Trigger>,
    stopping: bool,
    finished: Option<u8>,
    last_code: u8,
    last_restart: Option<Instant>,
    last_reload: Option<Instant>,
    restart_due: Option<Instant>,
    next_watch: Option<Instant>,
    failures: u32,
    /// Spreads `watch` (±10% in the real supervisor; none in tests).
    splay: fn(Duration) -> Duration,
    /// A delay within `restart_spread`'s window (uniform in the real supervisor).
    spread: fn(Duration) -> Duration,
    /// secret-run has a service manager to tell READY, RELOADING, STOPPING.
    manager: bool,
    /// The first child's readiness, awaited for the manager's READY.
    first: Option<Readiness>,
    /// RELOADING was told: READY follows when the reload is over.
    reload_told: bool,
    /// A child was started before (the next one is not the first).
    ever_started: bool,
    /// The issued credentials each live child was given.
    held: BTreeMap<Pid, BTreeSet<u64>>,
    /// Credentials a child was told to stop using (`on_change = "signal"`), released when
    /// it has had `stop_timeout` to do so.
    later: Vec<(Instant, BTreeSet<u64>)>,
    /// A restart slot is held for the hand-over under way.
    holding_slot: bool,
}

impl Policy {
    /// The policy of a run whose first values were resolved at `now`; the first child is
    /// reported with `Input::Spawned`. `reload_asked`: the reload signal came during that
    /// first resolve, whose values may predate the rotation it announces.
    pub fn new(
        run: RunConfig,
        values: Vec<ResolvedVar>,
        reload_asked: bool,
        now: Instant,
        splay: fn(Duration) -> Duration,
        spread: fn(Duration) -> Duration,
        manager: bool,
    ) -> Policy {
        let next_watch = run.watch.map(|d| now + splay(d));
        Policy {
            run,
            values,
            confirmed: now,
            child: None,
            task: Task::Idle,
            ending: Vec::new(),
            pending: reload_asked.then_some(Trigger::Signal),
            stopping: false,
            finished: None,
            last_code: 0,
            last_restart: None,
            last_reload: None,
            restart_due: None,
            next_watch,
            failures: 0,
            splay,
            spread,
            manager,
            first: None,
            reload_told: false,
            ever_started: false,
            held: BTreeMap::new(),
            later: Vec::new(),
            holding_slot: false,
        }
    }

    /// A restart slot is held (given back at exit when the run ends during a hand-over).
    pub fn holding_slot(&self) -> bool {
        self.holding_slot
    }

    /// The values the next child is started with.
    pub fn values(&self) -> &[ResolvedVar] {
        &self.values
    }

    /// Every child alive that secret-run started: the child, the one being tried out, and
    /// those being stopped.
    pub fn live_pids(&self) -> Vec<Pid> {
        let trying = match &self.task {
            Task::Trying { new, .. } => *new,
            _ => None,
        };
        self.child
            .map(|c| c.pid)
            .into_iter()
            .chain(trying)
            .chain(self.ending.iter().map(|e| e.pid))
            .collect()
    }

    /// The current child, when there is one.
    pub fn child(&self) -> Option<Pid> {
        self.child.map(|c| c.pid)
    }

    /// `Some(code)` once the run is over: secret-run exits with it.
    pub fn exit_code(&self) -> Option<u8> {
        if !self.ending.is_empty() {
            return None;
        }
        if let Some(code) = self.finished {
            return Some(code);
        }
        // Nothing left to run or wait for (a restart that could not start).
        let idle = matches!(self.task, Task::Idle);
        (idle && self.child.is_none() && self.restart_due.is_none()).then_some(self.last_code)
    }

    /// When the policy next has something to do by itself: feed `Input::Tick` then.
    pub fn next_deadline(&self) -> Option<Instant> {
        let kills = self.ending.iter().filter_map(|e| e.kill_at);
        let watch = self.next_watch.filter(|_| self.child.is_some());
        let trying = match &self.task {
            Task::Trying {
                readiness: Some(r), ..
            }
            | Task::Settling(r) => r.due(),
            _ => None,
        };
        let probe = trying
            .into_iter()
            .chain(self.first.and_then(|f| f.due()))
            .min();
        let idle = matches!(self.task, Task::Idle) && !self.stopping;
        let restart = self.restart_due.filter(|_| idle);
        let reload = (idle && self.pending.is_some() && self.child.is_some())
            .then(|| self.reload_allowed_at());
        let later = self.later.iter().map(|(at, _)| *at);
        let spreading = match &self.task {
            Task::Spreading { until, .. } => Some(*until),
            Task::Acquiring { retry, .. } => *retry,
            _ => None,
        };
        kills
            .chain(later)
            .chain(spreading)
            .chain(watch)
            .chain(probe)
            .chain(restart)
            .chain(reload.flatten())
            .min()
    }

    /// Handles one input that happened at `now`, then whatever has fallen due by then.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Signal(sig) => self.on_signal(sig, now, &mut out),
            Input::Exited { pid, code } => {
                let held = self.held.remove(&pid).unwrap_or_default();
                self.on_exit(pid, code, now, &mut out);
                self.release_unused(held, &mut out);
            }
            Input::Spawned(pid) => {
                self.held.insert(pid, tags(&self.values));
                self.on_spawned(pid, now, &mut out);
            }
            Input::SpawnFailed { code } => self.on_spawn_failed(code, now, &mut out),
            Input::Resolved(resolution) => {
                let issued = tags(&resolution.vars);
                self.on_resolved(resolution, now, &mut out);
                self.release_unused(issued, &mut out);
            }
            Input::Probed { pid, ready } => self.on_probed(pid, ready, now, &mut out),
            Input::Notified { pid } => self.on_ready(pid, now, &mut out),
            Input::Expiring(tag) => self.on_expiring(tag),
            Input::Acquired(ok) => self.on_acquired(ok, now, &mut out),
            Input::Tick => {}
        }
        self.advance(now, &mut out);
        // One release of each credential, however many ways it became unused.
        let mut released = BTreeSet::new();
        out.retain_mut(|a| match a {
            Action::Release(tags) => {
                tags.retain(|t| released.insert(*t));
                !tags.is_empty()
            }
            _ => true,
        });
        out
    }

    fn on_signal(&mut self, sig: Signal, now: Instant, out: &mut Vec<Action>) {
        if sig == self.run.reload_signal && !self.stopping {
            if self.pending.is_none() {
                tracing::info!(signal = %sig, "reload requested");
            } else {
                tracing::debug!(signal = %sig, "reload already pending; coalesced");
            }
            self.pending = Some(Trigger::Signal);
            return;
        }
        let stop = STOPPING.contains(&sig);
        for pid in self.live_pids() {
            out.push(Action::Forward { pid, signal: sig });
        }
        if !stop {
            return;
        }
        if self.manager && !self.stopping {
            out.push(Action::Tell(Tell::Stopping));
        }
        self.stopping = true;
        self.pending = None;
        self.restart_due = None;
        self.first = None;
        // A child being tried out got the signal too: it is being stopped now.
        if let Task::Trying { new: Some(new), .. } = self.task {
            self.ending.push(Ending {
                pid: new,
                kill_at: Some(now + self.run.stop_timeout),
            });
            self.discard(new, out);
        }
        if self.child.is_none() && self.ending.is_empty() {
            // Between a crash and its restart: nothing to stop, so stop here.
            self.finished.get_or_insert(self.last_code);
        }
    }

    /// A credential of the current values must be replaced: the next reload issues it anew.
    fn on_expiring(&mut self, tag: u64) {
        if self.stopping || !tags(&self.values).contains(&tag) {
            return;
        }
        if self.pending.is_none() {
            tracing::info!("an issued credential is near its end; reloading to replace it");
        }
        self.pending.get_or_insert(Trigger::Lease);
    }

    /// Releases those of `candidates` that no live child holds and the next child will not get.
    fn release_unused(&mut self, candidates: BTreeSet<u64>, out: &mut Vec<Action>) {
        if candidates.is_empty() {
            return;
        }
        let mut used = tags(&self.values);
        if let Task::Trying { previous, .. }
        | Task::Spreading {
            values: previous, ..
        }
        | Task::Acquiring {
            values: previous, ..
        } = &self.task
        {
            used.extend(tags(previous));
        }
        for held in self.held.values().chain(self.later.iter().map(|(_, t)| t)) {
            used.extend(held);
        }
        let unused: Vec<u64> = candidates.difference(&used).copied().collect();
        if !unused.is_empty() {
            out.push(Action::Release(unused));
        }
    }

    /// The values the next child gets are now `values`; those replaced are released if
    /// nobody holds them.
    fn set_values(&mut self, values: Vec<ResolvedVar>, out: &mut Vec<Action>) {
        let old = std::mem::replace(&mut self.values, values);
        self.release_unused(tags(&old), out);
    }

    fn on_exit(&mut self, pid: Pid, code: u8, now: Instant, out: &mut Vec<Action>) {
        if self.child.is_some_and(|c| c.pid == pid) {
            self.child_ended(code, now, out);
            return;
        }
        if let Some(i) = self.ending.iter().position(|e| e.pid == pid) {
            self.ending.remove(i);
            self.stopped(pid, code, now, out);
            return;
        }
        if let Task::Trying { new: Some(new), .. } = self.task {
            if new == pid {
                tracing::warn!(
                    pid = pid.as_raw(),
                    code,
                    "the new child ended before it was ready; the old one keeps running"
                );
                out.push(Action::Audit(Event::OverlapFailed {
                    pid: pid.as_raw(),
                    code,
                }));
                self.discard(new, out);
                out.push(Action::WriteFiles);
                self.end_task(now);
                return;
            }
        }
        tracing::debug!(pid = pid.as_raw(), code, "reaped an orphan");
    }

    /// The child ended by itself: done, or restarted after a pause (`restart_on_exit`).
    fn child_ended(&mut self, code: u8, now: Instant, out: &mut Vec<Action>) {
        let Some(child) = self.child.take() else {
            return;
        };
        if matches!(self.task, Task::Settling(_)) {
            // It ended before it was ready: the hand-over is over, its failure handled below.
            self.task = Task::Idle;
        }
        self.last_code = code;
        tracing::debug!(pid = child.pid.as_raw(), code, "child ended");
        out.push(Action::Audit(Event::Exit {
            pid: child.pid.as_raw(),
            code,
        }));
        if self.stopping || code == 0 || self.run.restart_on_exit == RestartOnExit::Never {
            self.finished = Some(code);
            if let Task::Trying { new: Some(new), .. } = self.task {
                self.stop(new, now, out);
                self.discard(new, out);
            }
            return;
        }
        if now.saturating_duration_since(child.started) > HEALTHY_RUN {
            self.failures = 0;
        }
        self.failures += 1;
        let pause = backoff(self.failures);
        tracing::warn!(
            code,
            restart_in_s = pause.as_secs(),
            "the child failed; restarting (restart_on_exit = on-failure)"
        );
        self.restart_due = Some(now + pause);
    }

    /// A child secret-run was stopping has ended: the task it belonged to goes on.
    fn stopped(&mut self, pid: Pid, code: u8, now: Instant, out: &mut Vec<Action>) {
        match self.task {
            Task::Replacing { old } if old == pid => {
                out.push(Action::Audit(Event::Stop {
                    pid: pid.as_raw(),
                    code,
                }));
                if self.stopping || self.finished.is_some() {
                    self.finished.get_or_insert(code);
                    self.task = Task::Idle;
                } else {
                    out.push(Action::Spawn);
                }
            }
            Task::Retiring { old, new } if old == pid => {
                out.push(Action::Audit(Event::Stop {
                    pid: pid.as_raw(),
                    code,
                }));
                out.push(Action::Audit(Event::Overlap {
                    old_pid: old.as_raw(),
                    pid: new.as_raw(),
                }));
                self.end_task(now);
            }
            Task::Discarding { new } if new == pid => {
                out.push(Action::Audit(Event::OverlapFailed {
                    pid: pid.as_raw(),
                    code,
                }));
                self.end_task(now);
            }
            _ => tracing::debug!(pid = pid.as_raw(), code, "a stopped child ended"),
        }
    }

    fn on_spawned(&mut self, pid: Pid, now: Instant, out: &mut Vec<Action>) {
        out.push(Action::Audit(Event::Start { pid: pid.as_raw() }));
        let started = Child { pid, started: now };
        match &mut self.task {
            Task::Replacing { old } => {
                out.push(Action::Audit(Event::Restart {
                    old_pid: old.as_raw(),
                    pid: pid.as_raw(),
                }));
                self.child = Some(started);
                match &self.run.ready {
                    Some(r) => {
                        self.task = Task::Settling(Readiness {
                            pid,
                            until: now + r.timeout,
                            next_probe: (!r.notify).then_some(now),
                            probing: false,
                        });
                    }
                    None => self.end_task(now),
                }
            }
            Task::Trying {
                old,
                new,
                readiness,
                ..
            } => {
                *new = Some(pid);
                out.push(Action::Audit(Event::OverlapStart {
                    old_pid: old.as_raw(),
                    pid: pid.as_raw(),
                }));
                *readiness = self.run.ready.as_ref().map(|r| Readiness {
                    pid,
                    until: now + r.timeout,
                    next_probe: (!r.notify).then_some(now),
                    probing: false,
                });
                if readiness.is_none() {
                    self.promote(pid, now, out);
                }
            }
            _ => {
                let first = !self.ever_started;
                self.ever_started = true;
                self.child = Some(started);
                if first && self.manager {
                    match &self.run.ready {
                        None => out.push(Action::Tell(Tell::Ready { pid: pid.as_raw() })),
                        Some(r) => {
                            self.first = Some(Readiness {
                                pid,
                                until: now + r.timeout,
                                next_probe: (!r.notify).then_some(now),
                                probing: false,
                            });
                        }
                    }
                }
            }
        }
    }

    fn on_spawn_failed(&mut self, code: u8, now: Instant, out: &mut Vec<Action>) {
        match self.task {
            Task::Trying { old, .. } => {
                tracing::error!("the new child cannot start; the old one keeps running");
                self.discard(old, out);
                out.push(Action::WriteFiles);
                self.end_task(now);
            }
            _ => {
                self.finished = Some(code);
                self.task = Task::Idle;
            }
        }
    }

    fn on_resolved(&mut self, resolution: Resolution, now: Instant, out: &mut Vec<Action>) {
        match std::mem::replace(&mut self.task, Task::Idle) {
            Task::Reloading(trigger) => self.reloaded(trigger, resolution, now, out),
            Task::Reviving => self.revived(resolution, now, out),
            other => {
                tracing::debug!("a resolve nobody waits for; dropped");
                self.task = other;
            }
        }
    }

    fn reloaded(
        &mut self,
        trigger: Trigger,
        resolution: Resolution,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.last_reload = Some(now);
        let Some(child) = self.child.filter(|_| !self.stopping) else {
            return;
        };
        out.push(Action::Audit(Event::Resolve {
            trigger,
            vars: VarRecord::all(&resolution.vars),
        }));
        let vars = match resolution.into_complete() {
            Ok(vars) => vars,
            Err(failure) => {
                tracing::warn!(
                    "reload failed; the child keeps running with the values it has:\n{failure}"
                );
                let age = now.saturating_duration_since(self.confirmed);
                out.push(Action::Audit(Event::Reload {
                    trigger,
                    outcome: ReloadOutcome::Failed {
                        failure: Failure::of(&failure),
                        age_s: age.as_secs(),
                    },
                }));
                if age > self.run.max_stale {
                    tracing::error!(
                        age_s = age.as_secs(),
                        max_stale_s = self.run.max_stale.as_secs(),
                        "the running child's secrets were last confirmed longer ago than max_stale"
                    );
                }
                return;
            }
        };
        self.confirmed = now;
        let names = changed(&self.values, &vars);
        let unchanged = names.is_empty();
        tracing::debug!(changed = %names.join(", "), "reload: compared");
        out.push(Action::Audit(Event::Reload {
            trigger,
            outcome: if unchanged {
                ReloadOutcome::Unchanged
            } else {
                ReloadOutcome::Changed(names)
            },
        }));
        if unchanged && self.run.restart == Restart::OnChange {
            tracing::info!("reload: no secret changed; nothing restarted");
            self.set_values(vars, out);
            return;
        }
        // A fleet that sees one change together spreads its restarts (`restart_spread`); an
        // expiring credential does not wait.
        if let Some(window) = self
            .run
            .restart_spread
            .filter(|_| trigger != Trigger::Lease)
        {
            let delay = (self.spread)(window).min(window);
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "reload: new values; applying them after a random delay (restart_spread)"
            );
            out.push(Action::Audit(Event::SpreadWait {
                delay_ms: delay.as_millis() as u64,
            }));
            self.task = Task::Spreading {
                values: vars,
                until: now + delay,
            };
            return;
        }
        self.apply(child, vars, now, out);
    }

    /// A restart slot's answer: the waiting values are applied, or asked for again later.
    fn on_acquired(&mut self, ok: bool, now: Instant, out: &mut Vec<Action>) {
        let Task::Acquiring { told, .. } = &mut self.task else {
            if ok {
                // Nobody waits for it any more (the run is stopping): give it back.
                self.holding_slot = true;
            }
            return;
        };
        if !ok {
            if !*told {
                *told = true;
                tracing::info!(
                    "every restart slot is taken; the child keeps its values and secret-run asks again"
                );
                out.push(Action::Audit(Event::Slot { what: "slot-wait" }));
            }
            let pause = SLOT_RETRY.0 + (self.spread)(SLOT_RETRY.1);
            if let Task::Acquiring { retry, .. } = &mut self.task {
                *retry = Some(now + pause);
            }
            return;
        }
        self.holding_slot = true;
        out.push(Action::Audit(Event::Slot {
            what: "slot-acquired",
        }));
        if let Task::Acquiring { values, .. } = std::mem::replace(&mut self.task, Task::Idle) {
            match self.child.filter(|_| !self.stopping) {
                Some(child) => self.apply(child, values, now, out),
                None => self.release_unused(tags(&values), out),
            }
        }
    }

    /// Hands new values to the child with the `on_change` policy (after taking a restart slot,
    /// with `max_concurrent_restarts`).
    fn apply(&mut self, child: Child, vars: Vec<ResolvedVar>, now: Instant, out: &mut Vec<Action>) {
        if self.run.max_concurrent_restarts.is_some() && !self.holding_slot {
            self.task = Task::Acquiring {
                values: vars,
                retry: None,
                told: false,
            };
            out.push(Action::Acquire);
            return;
        }
        tracing::info!(policy = ?self.run.on_change, "reload: applying new values");
        // The files first: a child told to re-read them (on_change = "signal"), or started
        // anew, finds the new content.
        out.push(Action::WriteFiles);
        match self.run.on_change {
            OnChange::Restart => {
                self.set_values(vars, out);
                self.child = None;
                self.task = Task::Replacing { old: child.pid };
                self.stop(child.pid, now, out);
            }
            OnChange::Signal => {
                // The child is told to use the new values: the credentials it had are released
                // once it has had stop_timeout to let go of them.
                let new = tags(&vars);
                if let Some(old) = self.held.insert(child.pid, new) {
                    self.later.push((now + self.run.stop_timeout, old));
                }
                self.set_values(vars, out);
                let signal = self.run.child_signal;
                out.push(Action::Send {
                    pid: child.pid,
                    signal,
                });
                out.push(Action::Audit(Event::Signal {
                    pid: child.pid.as_raw(),
                    signal,
                }));
                self.last_restart = Some(now);
            }
            OnChange::Overlap => {
                let previous = std::mem::replace(&mut self.values, vars);
                self.task = Task::Trying {
                    old: child.pid,
                    new: None,
                    previous,
                    readiness: None,
                };
                out.push(Action::Spawn);
            }
        }
    }

    /// After the child failed: fresh values if the backends answer, else the last-known-good
    /// ones while they are younger than `max_stale`.
    fn revived(&mut self, resolution: Resolution, now: Instant, out: &mut Vec<Action>) {
        if self.stopping {
            self.finished.get_or_insert(self.last_code);
            return;
        }
        out.push(Action::Audit(Event::Resolve {
            trigger: Trigger::Restart,
            vars: VarRecord::all(&resolution.vars),
        }));
        match resolution.into_complete() {
            Ok(vars) => {
                self.set_values(vars, out);
                self.confirmed = now;
            }
            Err(failure) => {
                let age = now.saturating_duration_since(self.confirmed);
                let failure_record = Failure::of(&failure);
                if age > self.run.max_stale {
                    tracing::error!(
                        age_s = age.as_secs(),
                        max_stale_s = self.run.max_stale.as_secs(),
                        "NOT restarting: the backends cannot be reached and the last-known-good values are older than max_stale:\n{failure}"
                    );
                    out.push(Action::Audit(Event::StaleRefused {
                        failure: failure_record,
                        age_s: age.as_secs(),
                    }));
                    self.failures += 1;
                    self.restart_due = Some(now + backoff(self.failures));
                    return;
                }
                tracing::warn!(
                    age_s = age.as_secs(),
                    "the backends cannot be reached; restarting with the last-known-good values:\n{failure}"
                );
                out.push(Action::Audit(Event::StaleServe {
                    failure: failure_record,
                    age_s: age.as_secs(),
                }));
            }
        }
        out.push(Action::WriteFiles);
        out.push(Action::Spawn);
    }

    fn on_probed(&mut self, pid: Pid, ready: bool, now: Instant, out: &mut Vec<Action>) {
        if ready {
            self.on_ready(pid, now, out);
            return;
        }
        let waiting = match &mut self.task {
            Task::Trying {
                readiness: Some(r), ..
            }
            | Task::Settling(r)
                if r.pid == pid =>
            {
                Some(r)
            }
            _ => self.first.as_mut().filter(|f| f.pid == pid),
        };
        if let Some(r) = waiting {
            r.probing = false;
            r.next_probe = Some(now + PROBE_PAUSE);
        }
    }

    /// `pid` is ready (a probe said so, or its own `READY=1`).
    fn on_ready(&mut self, pid: Pid, now: Instant, out: &mut Vec<Action>) {
        match self.task {
            Task::Trying { new: Some(new), .. } if new == pid => {
                self.promote(pid, now, out);
                return;
            }
            Task::Settling(r) if r.pid == pid => {
                tracing::info!(pid = pid.as_raw(), "the restarted child is ready");
                out.push(Action::Audit(Event::Ready { pid: pid.as_raw() }));
                self.end_task(now);
            }
            _ => {}
        }
        if self.first.is_some_and(|f| f.pid == pid) {
            self.first = None;
            tracing::debug!(pid = pid.as_raw(), "the first child is ready");
            out.push(Action::Tell(Tell::Ready { pid: pid.as_raw() }));
        }
    }

    /// The new child is ready: it becomes the child, and the old one is stopped.
    fn promote(&mut self, new: Pid, now: Instant, out: &mut Vec<Action>) {
        let Task::Trying { old, .. } = self.task else {
            return;
        };
        let old_alive = self.child.is_some_and(|c| c.pid == old);
        self.child = Some(Child {
            pid: new,
            started: now,
        });
        // The old child failed during the try-out (restart_on_exit): its restart is not
        // needed any more, and there is nothing to stop.
        self.restart_due = None;
        if old_alive {
            self.task = Task::Retiring { old, new };
            self.stop(old, now, out);
        } else {
            out.push(Action::Audit(Event::Overlap {
                old_pid: old.as_raw(),
                pid: new.as_raw(),
            }));
            self.end_task(now);
        }
    }

    fn not_ready(&mut self, new: Pid, now: Instant, out: &mut Vec<Action>) {
        tracing::warn!(
            pid = new.as_raw(),
            "the new child did not become ready; it is stopped and the old one keeps running"
        );
        self.stop(new, now, out);
        self.discard(new, out);
        // The old child keeps its values, and its files their content.
        out.push(Action::WriteFiles);
    }

    /// Sends the stop signal; SIGKILL follows after `stop_timeout`.
    fn stop(&mut self, pid: Pid, now: Instant, out: &mut Vec<Action>) {
        tracing::debug!(pid = pid.as_raw(), signal = %self.run.stop_signal, "stopping a child");
        out.push(Action::Send {
            pid,
            signal: self.run.stop_signal,
        });
        self.ending.push(Ending {
            pid,
            kill_at: Some(now + self.run.stop_timeout),
        });
    }

    /// The child being tried out is not taken: the values go back to the old child's, and the
    /// task waits for it to end when it is being stopped.
    fn discard(&mut self, new: Pid, out: &mut Vec<Action>) {
        if let Task::Trying { previous, .. } = std::mem::replace(&mut self.task, Task::Idle) {
            self.set_values(previous, out);
            if self.ending.iter().any(|e| e.pid == new) {
                self.task = Task::Discarding { new };
            }
        }
    }

    /// A hand-over is over, whichever way: the next one waits `min_restart_interval`.
    fn end_task(&mut self, now: Instant) {
        self.task = Task::Idle;
        self.last_restart = Some(now);
    }

    /// Fires what has fallen due by `now`, and starts the next task when none runs.
    fn advance(&mut self, now: Instant, out: &mut Vec<Action>) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.later)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.later = later;
        for (_, tags) in due {
            self.release_unused(tags, out);
        }
        for e in &mut self.ending {
            if e.kill_at.is_some_and(|at| at <= now) {
                tracing::warn!(
                    pid = e.pid.as_raw(),
                    "a child did not stop within stop_timeout; SIGKILL"
                );
                out.push(Action::Send {
                    pid: e.pid,
                    signal: Signal::SIGKILL,
                });
                e.kill_at = None;
            }
        }
        if let (Some(at), Some(every)) = (self.next_watch, self.run.watch) {
            if at <= now && self.child.is_some() {
                tracing::debug!("watch: checking the backends for a rotation");
                self.pending.get_or_insert(Trigger::Watch);
                self.next_watch = Some(now + (self.splay)(every));
            }
        }
        if let Task::Acquiring { retry, values, .. } = &mut self.task {
            if self.stopping {
                let values = std::mem::take(values);
                self.task = Task::Idle;
                self.release_unused(tags(&values), out);
            } else if retry.is_some_and(|at| at <= now) {
                *retry = None;
                out.push(Action::Acquire);
            }
        }
        if matches!(&self.task, Task::Spreading { until, .. } if *until <= now) {
            if let Task::Spreading { values, .. } = std::mem::replace(&mut self.task, Task::Idle) {
                match self.child.filter(|_| !self.stopping) {
                    Some(child) => self.apply(child, values, now, out),
                    None => self.release_unused(tags(&values), out),
                }
            }
        }
        if matches!(self.task, Task::Settling(_)) && self.stopping {
            self.task = Task::Idle;
        }
        let (trying, settling) = match &mut self.task {
            Task::Trying {
                readiness: Some(r), ..
            } => (r.check(now), false),
            Task::Settling(r) => (r.check(now), true),
            _ => (Verdict::Waiting, false),
        };
        match trying {
            Verdict::Waiting => {}
            Verdict::Probe(pid) => out.push(Action::Probe(pid)),
            Verdict::TimedOut(pid) if settling => {
                // The old child is gone: the new one stays, and the hand-over is over.
                tracing::warn!(
                    pid = pid.as_raw(),
                    "the restarted child did not become ready within ready.timeout; it keeps running"
                );
                out.push(Action::Audit(Event::NotReady { pid: pid.as_raw() }));
                self.end_task(now);
            }
            Verdict::TimedOut(pid) => self.not_ready(pid, now, out),
        }
        match self
            .first
            .as_mut()
            .map_or(Verdict::Waiting, |f| f.check(now))
        {
            Verdict::Waiting => {}
            Verdict::Probe(pid) => out.push(Action::Probe(pid)),
            Verdict::TimedOut(pid) => {
                tracing::warn!(
                    pid = pid.as_raw(),
                    "the child did not become ready within ready.timeout; the service manager is not told READY"
                );
                self.first = None;
            }
        }
        if self.holding_slot && matches!(self.task, Task::Idle) {
            self.holding_slot = false;
            out.push(Action::ReleaseSlot);
            out.push(Action::Audit(Event::Slot {
                what: "slot-released",
            }));
        }
        if self.reload_told && matches!(self.task, Task::Idle) {
            self.reload_told = false;
            if let Some(child) = self.child.filter(|_| !self.stopping) {
                out.push(Action::Tell(Tell::Ready {
                    pid: child.pid.as_raw(),
                }));
            }
        }
        if !matches!(self.task, Task::Idle) || self.stopping || self.finished.is_some() {
            return;
        }
        if let Some(at) = self.restart_due {
            if at <= now {
                self.restart_due = None;
                self.task = Task::Reviving;
                out.push(Action::Resolve);
                return;
            }
        }
        if self.child.is_some() && now >= self.reload_allowed_at().unwrap_or(now) {
            if let Some(trigger) = self.pending.take() {
                tracing::debug!(trigger = trigger.as_str(), "reloading");
                self.task = Task::Reloading(trigger);
                if trigger != Trigger::Watch {
                    out.push(Action::Refresh);
                }
                if self.manager {
                    out.push(Action::Tell(Tell::Reloading));
                    self.reload_told = true;
                }
                out.push(Action::Resolve);
            }
        }
    }

    /// Restarts are spaced by `min_restart_interval`, reload attempts by at least a second.
    fn reload_allowed_at(&self) -> Option<Instant> {
        let after_restart = self.last_restart.map(|t| t + self.run.min_restart_interval);
        let gap = MIN_RELOAD_GAP.min(self.run.min_restart_interval);
        let after_reload = self.last_reload.map(|t| t + gap);
        [after_restart, after_reload].into_iter().flatten().max()
    }
}

/// The issued credentials `vars` use.
fn tags(vars: &[ResolvedVar]) -> BTreeSet<u64> {
    vars.iter().filter_map(|v| v.lease).collect()
}

/// The names of the variables whose value (or presence) differs.
fn changed(old: &[ResolvedVar], new: &[ResolvedVar]) -> Vec<String> {
    use std::collections::BTreeMap;
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

/// 1 s, 2 s, 4 s … up to 30 s between restarts of a failing child.
pub fn backoff(failures: u32) -> Duration {
    crate::duration::exponential(Duration::from_secs(1), failures, Duration::from_secs(30))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
