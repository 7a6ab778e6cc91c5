//! Supervise mode (the default): secret-run stays the child's parent. It forwards the signals a
//! service manager or a container runtime sends, reaps zombies (all of them as PID 1 or with
//! `--subreaper`), reloads the secrets on the reload signal or when `watch` finds a rotation, and
//! exits with the child's code (128 + N when signal N killed it).
//!
//! The parts: `signals` installs the handlers (before the first resolve); `policy` decides, as a
//! pure state machine, what each signal, exit, resolve and readiness answer leads to; `child`
//! spawns and signals processes; `ready` probes a new child. This file is the driver: one task
//! that turns notices, timers and finished work into the policy's inputs, and its actions into
//! system calls, one at a time, so there is never a moment with two children except during an
//! `overlap` hand-over. SIGINT is not forwarded when the child already got it from the terminal:
//! both are in the terminal's foreground process group.

mod child;
mod notify;
mod policy;
mod ready;
mod signals;
pub mod status;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use self::notify::{ChildSocket, Manager, Message};
use self::policy::{Action, Input, Policy};
use self::signals::Notice;
pub use self::signals::Signals;
use super::Target;
use super::exit::code_of;
use super::files::Files;
use super::leases::{Leases, Note};
use super::listen::Listeners;
use crate::audit::Audit;
use crate::error::{Error, Result};
use crate::manifest::plan::Plan;
use crate::resolve::{self, Resolution, ResolvedVar};

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Reap the orphans of the child too (PR_SET_CHILD_SUBREAPER); implied as PID 1.
    pub subreaper: bool,
    /// Run the child in its own process group and signal the group.
    pub process_group: bool,
    /// Write the `[cache]` after each complete reload (`--no-cache` turns it off).
    pub cache: bool,
}

/// What a run gives each child besides its values: the `listen` sockets, the delivered files,
/// and the pipes of redacted output.
#[derive(Debug)]
pub struct Delivery<'a> {
    pub listeners: &'a Listeners,
    pub files: Files<'a>,
    pub redirect: Option<&'a crate::launch::redirect::Redirect>,
}

/// What the first resolve hands to the supervisor.
#[derive(Debug)]
pub struct Start {
    pub values: Vec<ResolvedVar>,
    pub audit: Audit,
    pub signals: Signals,
    /// The reload signal arrived during the first resolve: reload once the child runs.
    pub reload_asked: bool,
    /// The credentials the first resolve issued: renewed, replaced and revoked from now on.
    pub issued: Vec<resolve::Issued>,
}

type Work<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

pub struct Supervisor<'a> {
    plan: &'a Plan,
    target: &'a Target,
    listeners: &'a Listeners,
    /// Values delivered as files, rewritten when they change.
    files: Files<'a>,
    /// Variables that hold a file's path.
    paths: std::collections::BTreeMap<String, String>,
    /// The child's output through redaction, when asked for.
    redirect: Option<&'a crate::launch::redirect::Redirect>,
    /// secret-run's own service manager (`NOTIFY_SOCKET`), when it has one.
    manager: Option<Manager>,
    /// What the children's notify sockets receive (`ready.notify`).
    messages: tokio::sync::mpsc::UnboundedReceiver<Message>,
    message_tx: tokio::sync::mpsc::UnboundedSender<Message>,
    /// The reader of each live child's notify socket.
    readers: std::collections::HashMap<Pid, tokio::task::JoinHandle<()>>,
    timeout: Duration,
    opts: Options,
    audit: Audit,
    notices: tokio::sync::mpsc::UnboundedReceiver<Notice>,
    policy: Policy,
    /// Reap every child, not only ours (PID 1, or `--subreaper`).
    reap_all: bool,
    /// The newest child was made the terminal's foreground group (`--process-group`).
    holds_terminal: bool,
    /// A resolve the policy asked for, while it runs.
    resolving: Option<Work<'a, Resolution>>,
    /// A readiness probe of this child, while it runs.
    probing: Option<(Pid, Work<'a, bool>)>,
    /// The issued credentials, kept alive while a child uses them.
    leases: Leases,
    /// `[run] pidfile` and its status file, when asked for.
    status: Option<status::Status>,
    /// A request for a restart slot, while it runs.
    acquiring: Option<Work<'a, bool>>,
    /// Slots being given back.
    slot_work: futures_util::stream::FuturesUnordered<Work<'a, ()>>,
    /// Who this replica is in the restart slots: host, PID and a random part.
    holder: String,
}

impl std::fmt::Debug for Supervisor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("policy", &self.policy)
            .field("resolving", &self.resolving.is_some())
            .field("probing", &self.probing.as_ref().map(|p| p.0))
            .finish_non_exhaustive()
    }
}

impl<'a> Supervisor<'a> {
    /// Takes over the signal handlers; the child is started by `run`.
    pub fn new(
        plan: &'a Plan,
        target: &'a Target,
        delivery: Delivery<'a>,
        start: Start,
        timeout: Duration,
        opts: Options,
    ) -> Result<Supervisor<'a>> {
        let pid1 = nix::unistd::getpid().as_raw() == 1;
        if opts.subreaper && !pid1 {
            nix::sys::prctl::set_child_subreaper(true)
                .map_err(Error::os("become a subreaper (PR_SET_CHILD_SUBREAPER)"))?;
        }
        let mut audit = start.audit;
        audit.in_background();
        let mut leases = Leases::default();
        for note in leases.add(start.issued, &super::leases::vars_of(&start.values)) {
            if let Note::Audit(event) = note {
                audit.record(event);
            }
        }
        let manager = Manager::from_env();
        let policy = Policy::new(
            plan.run.clone(),
            start.values,
            start.reload_asked,
            std::time::Instant::now(),
            splay,
            spread,
            manager.is_some(),
        );
        let (message_tx, messages) = tokio::sync::mpsc::unbounded_channel();
        let Delivery {
            listeners,
            files,
            redirect,
        } = delivery;
        let paths = files.env();
        Ok(Supervisor {
            plan,
            target,
            listeners,
            files,
            paths,
            redirect,
            manager,
            messages,
            message_tx,
            readers: std::collections::HashMap::new(),
            timeout,
            opts,
            audit,
            notices: start.signals.notices,
            policy,
            reap_all: pid1 || opts.subreaper,
            holds_terminal: false,
            resolving: None,
            probing: None,
            leases,
            status: plan
                .run
                .pidfile
                .as_deref()
                .map(|pidfile| {
                    let waits_ready = plan.run.ready.is_some()
                        && plan.run.on_change == crate::manifest::run::OnChange::Restart;
                    status::Status::open(pidfile, waits_ready)
                })
                .transpose()?,
            acquiring: None,
            slot_work: futures_util::stream::FuturesUnordered::new(),
            holder: format!(
                "{}-{}-{:08x}",
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_else(|_| "host".into()),
                std::process::id(),
                fastrand::u32(..)
            ),
        })
    }

    pub async fn run(mut self) -> Result<u8> {
        let result = self.supervise().await;
        // Every credential still held is revoked before secret-run exits; a failure is
        // logged and audited, and the exit code stays the child's.
        // A run that ends during a hand-over gives its restart slot back.
        if self.policy.holding_slot() {
            self.act(Action::ReleaseSlot);
        }
        while futures_util::StreamExt::next(&mut self.slot_work)
            .await
            .is_some()
        {}
        let leases = std::mem::take(&mut self.leases);
        if !leases.is_empty() {
            for event in leases.finish().await {
                self.audit.record(event);
            }
        }
        result
    }

    async fn supervise(&mut self) -> Result<u8> {
        // The first child's failure to start is the run's error (126, 127), as with --exec.
        let first = self.spawn()?;
        self.record_use(first);
        self.feed(Input::Spawned(first));
        loop {
            if let Some(code) = self.policy.exit_code() {
                return Ok(code);
            }
            let deadline = self
                .policy
                .next_deadline()
                .into_iter()
                .chain(self.leases.next_deadline())
                .min()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                Some(notice) = self.notices.recv() => match notice {
                    Notice::Signal(sig) => self.feed(Input::Signal(sig)),
                    Notice::ChildChanged => self.reap(),
                },
                Some(message) = self.messages.recv() => self.notified(message),
                () = sleep_until_opt(deadline) => {
                    let notes = self.leases.tick();
                    self.noted(notes);
                    self.feed(Input::Tick);
                }
                ok = next_of(&mut self.acquiring) => {
                    self.acquiring = None;
                    self.feed(Input::Acquired(ok));
                }
                Some(()) = futures_util::StreamExt::next(&mut self.slot_work), if !self.slot_work.is_empty() => {}
                done = self.leases.next_done() => {
                    let notes = self.leases.done(done);
                    self.noted(notes);
                }
                mut resolution = next_of(&mut self.resolving) => {
                    self.resolving = None;
                    // New values are redacted from now on; the old ones still are.
                    if let Some(redirect) = self.redirect {
                        redirect.add(&crate::launch::redactor_of(&resolution.vars, self.plan).0);
                    }
                    self.cache(&resolution);
                    let issued = std::mem::take(&mut resolution.issued);
                    let notes = self.leases.add(issued, &super::leases::vars_of(&resolution.vars));
                    self.noted(notes);
                    // Exits left for later while the resolve's own processes ran.
                    self.reap();
                    self.feed(Input::Resolved(resolution));
                }
                ready = next_probe(&mut self.probing) => {
                    let pid = self.probing.take().map(|(pid, _)| pid);
                    self.reap();
                    if let Some(pid) = pid {
                        self.feed(Input::Probed { pid, ready });
                    }
                }
            }
        }
    }

    /// Hands one input to the policy and carries out what it decides; a spawn's result goes
    /// back to it before anything else.
    fn feed(&mut self, input: Input) {
        let mut inputs = std::collections::VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let actions = self.policy.handle(input, std::time::Instant::now());
            for action in actions {
                if let Some(answer) = self.act(action) {
                    inputs.push_back(answer);
                }
            }
        }
    }

    /// A complete reload's values go to the `[cache]`: sealed here, written on a blocking
    /// thread so that a slow disk never holds the event loop.
    fn cache(&self, resolution: &Resolution) {
        let Some(config) = self.plan.cache.as_ref().filter(|_| self.opts.cache) else {
            return;
        };
        if !resolution.is_complete() {
            return;
        }
        match crate::cache::seal(self.plan, config, &resolution.vars, None) {
            Ok(Some((_, sealed))) => {
                let path = config.path.clone();
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = crate::cache::write(&path, &sealed) {
                        tracing::warn!("{e}");
                    }
                });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }

    /// The backend that keeps the restart slots, and their settings.
    fn slots(
        &self,
    ) -> Option<(
        &'a dyn crate::backend::Slots,
        &'a crate::manifest::run::RestartSlots,
    )> {
        let plan: &'a Plan = self.plan;
        let config = plan.run.max_concurrent_restarts.as_ref()?;
        let slots = plan.backends.get(&config.vault)?.backend.slots()?;
        Some((slots, config))
    }

    /// Which issued credentials the child `pid` was started with.
    fn record_use(&mut self, pid: Pid) {
        let tags: std::collections::BTreeSet<u64> = self
            .policy
            .values()
            .iter()
            .filter_map(|v| v.lease)
            .collect();
        let leases = self.leases.labels(tags);
        if !leases.is_empty() {
            self.audit.record(crate::audit::Event::LeaseUse {
                pid: pid.as_raw(),
                leases,
            });
        }
    }

    /// What the lease keeper found: records for the audit, credentials to replace.
    fn noted(&mut self, notes: Vec<Note>) {
        for note in notes {
            match note {
                Note::Audit(event) => self.audit.record(event),
                Note::Expiring(tag) => self.feed(Input::Expiring(tag)),
            }
        }
    }

    fn act(&mut self, action: Action) -> Option<Input> {
        match action {
            Action::Spawn => match self.spawn() {
                Ok(pid) => {
                    self.record_use(pid);
                    return Some(Input::Spawned(pid));
                }
                Err(e) => {
                    tracing::error!("cannot start the child: {e}");
                    return Some(Input::SpawnFailed {
                        code: e.exit_code(),
                    });
                }
            },
            Action::Forward { pid, signal } => {
                if signal == Signal::SIGINT
                    && !self.opts.process_group
                    && child::got_it_from_terminal()
                {
                    tracing::debug!(
                        "SIGINT came from the terminal to the whole foreground group; not forwarded"
                    );
                } else {
                    child::send(pid, signal, self.opts);
                }
            }
            Action::Send { pid, signal } => child::send(pid, signal, self.opts),
            Action::Resolve => {
                let (plan, timeout) = (self.plan, self.timeout);
                let kept = self.leases.kept();
                self.resolving = Some(Box::pin(async move {
                    resolve::resolve(plan, timeout, &kept).await
                }));
            }
            Action::Release(tags) => self.leases.release(&tags),
            Action::Acquire => {
                let Some((slots, config)) = self.slots() else {
                    return Some(Input::Acquired(true));
                };
                let holder = self.holder.clone();
                self.acquiring = Some(Box::pin(async move {
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                    slots
                        .acquire(&config.path, config.n, &holder, config.ttl, deadline)
                        .await
                        .unwrap_or_else(|e| {
                            tracing::warn!("cannot ask for a restart slot: {e}");
                            false
                        })
                }));
            }
            Action::ReleaseSlot => {
                if let Some((slots, config)) = self.slots() {
                    let holder = self.holder.clone();
                    self.slot_work.push(Box::pin(async move {
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                        if let Err(e) = slots.release(&config.path, &holder, deadline).await {
                            tracing::warn!(
                                "cannot give the restart slot back (it expires by its ttl): {e}"
                            );
                        }
                    }));
                }
            }
            Action::Refresh => {
                for handle in self.plan.backends.values() {
                    handle.backend.refresh();
                }
            }
            Action::Probe(pid) => {
                if let Some(ready) = &self.plan.run.ready {
                    self.probing = Some((pid, Box::pin(ready::probe(ready, pid))));
                } else {
                    return Some(Input::Probed { pid, ready: true });
                }
            }
            Action::Audit(event) => {
                if let Some(status) = &mut self.status {
                    status.observe(&event);
                }
                self.audit.record(event);
            }
            Action::WriteFiles => {
                if let Err(e) = self.files.write(self.policy.values()) {
                    tracing::error!("cannot rewrite the secret files: {e}");
                }
            }
            Action::Tell(what) => {
                if let Some(manager) = &self.manager {
                    manager.tell(&what);
                }
            }
        }
        None
    }

    /// Starts a child with the policy's values, the `listen` sockets and, with
    /// `ready.notify`, a notify socket of its own.
    fn spawn(&mut self) -> Result<Pid> {
        let socket = if self.plan.run.ready.as_ref().is_some_and(|r| r.notify) {
            Some(ChildSocket::bind()?)
        } else {
            None
        };
        let extras = child::Extras {
            redirect: self.redirect,
            paths: &self.paths,
            listeners: self.listeners,
            notify_socket: socket.as_ref().map(|s| s.env.as_str()),
            hide_manager: self.manager.is_some(),
        };
        let spawned = child::spawn(
            self.target,
            self.plan,
            self.policy.values(),
            self.opts,
            &extras,
        )?;
        self.holds_terminal = spawned.holds_terminal;
        if let Some(socket) = socket {
            let reader = socket.listen(spawned.pid, self.message_tx.clone());
            self.readers.insert(spawned.pid, reader);
        }
        Ok(spawned.pid)
    }

    /// A datagram on a child's notify socket: its `STATUS=` is logged, and `READY=1` counts
    /// only from the child itself.
    fn notified(&mut self, message: Message) {
        if let Some(status) = notify::status(&message.text) {
            // The child's words in secret-run's log: redacted as its output is, when it is.
            let status = match self.redirect {
                Some(r) => r.redact(status),
                None => status.to_owned(),
            };
            tracing::info!(pid = message.child.as_raw(), "child status: {status}");
        }
        if !notify::says_ready(&message.text) {
            return;
        }
        if message.sender == message.child {
            tracing::debug!(pid = message.child.as_raw(), "READY=1 from the child");
            self.feed(Input::Notified { pid: message.child });
        } else {
            tracing::warn!(
                child = message.child.as_raw(),
                sender = message.sender.as_raw(),
                "READY=1 from a process that is not the child (a descendant?): ignored, as systemd's NotifyAccess=main does"
            );
        }
    }

    /// Collects every exit that is ours to collect. While the runtime has children of its own
    /// (a `command` provider, a readiness program), only ours are reaped, by PID.
    fn reap(&mut self) {
        let mut ended: Vec<(Pid, u8)> = Vec::new();
        let mut stopped = None;
        // WUNTRACED: a child stopped by the terminal (Ctrl-Z, or reading it from the
        // background) is reported too, so that secret-run can stop with it.
        let flags = Some(WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED);
        let mut note = |status: WaitStatus| match status {
            WaitStatus::Stopped(pid, _) => stopped = Some(pid),
            status => {
                if let (Some(pid), Some(code)) = (status.pid(), code_of(status)) {
                    ended.push((pid, code));
                }
            }
        };
        let runtime_children = self.resolving.is_some() || self.probing.is_some();
        if self.reap_all && !runtime_children {
            loop {
                match waitpid(Pid::from_raw(-1), flags) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(status) => note(status),
                }
            }
        } else {
            for pid in self.policy.live_pids() {
                if let Ok(status) = waitpid(pid, flags) {
                    note(status);
                }
            }
        }
        for (pid, code) in ended {
            if let Some(reader) = self.readers.remove(&pid) {
                reader.abort();
            }
            self.feed(Input::Exited { pid, code });
        }
        if let Some(pid) = stopped.filter(|p| self.policy.child() == Some(*p)) {
            if self.holds_terminal {
                child::follow_stop(pid, self.opts);
            }
        }
    }
}

/// Anywhere in `[0, window]`, drawn per process: replicas that see a change together apply it
/// apart.
fn spread(window: Duration) -> Duration {
    window.mul_f64(fastrand::f64())
}

/// ±10% around `d`, so that a fleet started together does not poll in step.
fn splay(d: Duration) -> Duration {
    d.mul_f64(0.9 + 0.2 * fastrand::f64())
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn next_of<T>(work: &mut Option<Work<'_, T>>) -> T {
    match work {
        Some(w) => w.await,
        None => std::future::pending().await,
    }
}

async fn next_probe(probe: &mut Option<(Pid, Work<'_, bool>)>) -> bool {
    match probe {
        Some((_, w)) => w.await,
        None => std::future::pending().await,
    }
}
