//! Resolution: every backend in use is asked at once, one batch per backend, under one deadline;
//! each variable then gets its value, its default, nothing (optional), or an error. Every problem
//! of a run is collected, so that three missing secrets are one error listing three.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use secrecy::SecretString;
use tokio::task::JoinSet;
use tokio::time::Instant;

use nix::poll::{PollFd, PollFlags};
use std::os::fd::AsFd;

use crate::backend::{Fetched, Handle, Lease, Reader, Request};
use crate::error::Error;
use crate::failure::{BackendFailure, ResolveFailure, VarProblem};
use crate::fsread::wait_readable;
use crate::interrupt::Interrupts;
use crate::manifest::plan::{Plan, PlannedVar};
use crate::secret::{self, EnvName, ErrorKind, SecretError};

#[derive(Debug)]
pub enum Outcome {
    Value(SecretString),
    Default(SecretString),
    /// Optional and not found: the variable is left unset.
    Absent,
    /// An endpoint that issues credentials, not read (`check` without `--issue`).
    Unissued,
    Failed(SecretError),
}

#[derive(Debug)]
pub struct ResolvedVar {
    pub name: EnvName,
    pub backend: String,
    pub path: String,
    pub version: Option<String>,
    /// What else the backend says of the version read (its creation time, its stages).
    pub about: Option<String>,
    /// The issued credential the value belongs to (`Issued::tag`): entries of one request share it.
    pub lease: Option<u64>,
    pub outcome: Outcome,
}

impl ResolvedVar {
    pub fn value(&self) -> Option<&SecretString> {
        match &self.outcome {
            Outcome::Value(v) | Outcome::Default(v) => Some(v),
            Outcome::Absent | Outcome::Unissued | Outcome::Failed(_) => None,
        }
    }
}

#[derive(Debug)]
pub struct Resolution {
    pub vars: Vec<ResolvedVar>,
    pub backend_failures: Vec<BackendFailure>,
    /// The credentials this resolve issued (kept ones are not repeated): whoever holds the
    /// resolution renews and revokes them, or says why nobody will.
    pub issued: Vec<Issued>,
}

/// A credential a backend issued with a lease (or a certificate's validity).
#[derive(Debug)]
pub struct Issued {
    /// Unique in this process; the variables that share the credential carry it.
    pub tag: u64,
    pub backend: String,
    pub handle: Handle,
    pub request: Request,
    pub lease: Lease,
    /// What was read, for keeping the credential across reloads.
    pub fetched: Fetched,
}

/// Credentials a reload keeps rather than issues again (their leases are alive and renewed):
/// a reload must not mint a database user per `watch` tick.
#[derive(Debug, Default)]
pub struct Kept {
    pub held: HashMap<(String, Request), (u64, Fetched)>,
}

impl Kept {
    pub fn none() -> Kept {
        Kept::default()
    }
}

static NEXT_TAG: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Resolution {
    /// Every required variable has a value (what `into_complete` would accept).
    pub fn is_complete(&self) -> bool {
        self.backend_failures.is_empty()
            && !self
                .vars
                .iter()
                .any(|v| matches!(v.outcome, Outcome::Failed(_)))
    }

    /// `Err` with every problem when any required variable has no value.
    pub fn into_complete(self) -> Result<Vec<ResolvedVar>, ResolveFailure> {
        let failed_backends: BTreeSet<&str> = self
            .backend_failures
            .iter()
            .map(|f| f.backend.as_str())
            .collect();
        let var_problems: Vec<VarProblem> = self
            .vars
            .iter()
            .filter(|v| !failed_backends.contains(v.backend.as_str()))
            .filter_map(|v| match &v.outcome {
                Outcome::Failed(e) => Some(VarProblem {
                    name: v.name.clone(),
                    backend: v.backend.clone(),
                    path: v.path.clone(),
                    error: e.clone(),
                }),
                _ => None,
            })
            .collect();
        if var_problems.is_empty() && self.backend_failures.is_empty() {
            return Ok(self.vars);
        }
        Err(ResolveFailure {
            backends: self.backend_failures,
            vars: var_problems,
        })
    }
}

type BackendResults = HashMap<Request, Result<Fetched, SecretError>>;
type Results = HashMap<String, Result<BackendResults, SecretError>>;

/// The distinct reads one backend must do.
struct Batch {
    name: String,
    backend: Handle,
    requests: Vec<Request>,
}

/// One resolve of a plan: its batches, its deadline, and what came back. Both ways of running
/// it (a reader thread for local backends only, the async runtime otherwise) share it.
struct Round<'p> {
    plan: &'p Plan,
    timeout: Duration,
    started: std::time::Instant,
    names: Vec<String>,
}

impl<'p> Round<'p> {
    fn new(plan: &'p Plan, timeout: Duration, kept: &Kept) -> (Round<'p>, Vec<Batch>) {
        let batches = batches(plan, kept);
        let round = Round {
            plan,
            timeout,
            started: std::time::Instant::now(),
            names: batches.iter().map(|b| b.name.clone()).collect(),
        };
        tracing::debug!(
            variables = plan.vars.len(),
            backends = round.names.len(),
            "resolving"
        );
        (round, batches)
    }

    fn deadline(&self) -> std::time::Instant {
        self.started + self.timeout
    }

    /// Gives each variable its outcome; backends with no answer fail as a whole.
    fn finish(self, mut results: Results, kept: &Kept) -> Resolution {
        tracing::debug!(
            elapsed_us = self.started.elapsed().as_micros() as u64,
            "resolve finished"
        );
        for ((backend, request), (_, fetched)) in &kept.held {
            if let Ok(map) = results
                .entry(backend.clone())
                .or_insert_with(|| Ok(BackendResults::new()))
            {
                map.insert(request.clone(), Ok(fetched.copy()));
            }
        }
        let issued = self.issued(&results, kept);
        let mut resolution = assemble(self.plan, results, &self.names, self.timeout, &issued);
        compose(self.plan, &mut resolution);
        resolution.issued = issued
            .into_values()
            .filter(|i| {
                !kept
                    .held
                    .contains_key(&(i.backend.clone(), i.request.clone()))
            })
            .collect();
        resolution
    }

    /// Every answer that carries a lease, kept ones with their tag and new ones with a new tag.
    fn issued(&self, results: &Results, kept: &Kept) -> HashMap<(String, Request), Issued> {
        let mut issued = HashMap::new();
        for (backend, answers) in results {
            let (Ok(answers), Some(handle)) = (answers, self.plan.backends.get(backend)) else {
                continue;
            };
            for (request, answer) in answers {
                let Ok(fetched) = answer else { continue };
                let Some(lease) = &fetched.lease else {
                    continue;
                };
                let key = (backend.clone(), request.clone());
                let tag = kept.held.get(&key).map_or_else(
                    || NEXT_TAG.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    |(tag, _)| *tag,
                );
                issued.insert(
                    key,
                    Issued {
                        tag,
                        backend: backend.clone(),
                        handle: handle.clone(),
                        request: request.clone(),
                        lease: lease.clone(),
                        fetched: fetched.copy(),
                    },
                );
            }
        }
        issued
    }
}

/// Renders the composed values again, after values were filled in from elsewhere (the cache).
pub fn recompose(plan: &Plan, resolution: &mut Resolution) {
    let composed: BTreeSet<&EnvName> = plan.templates.iter().map(|t| &t.name).collect();
    resolution.vars.retain(|v| !composed.contains(&v.name));
    compose(plan, resolution);
}

/// Renders the composed values (`template = "…"`), in the plan's order, from the values just
/// resolved; an `as_file` entry gives its file's path. A template whose input did not resolve
/// fails with that input's kind (an outage stays an outage).
fn compose(plan: &Plan, resolution: &mut Resolution) {
    use secrecy::ExposeSecret;
    use secrecy::zeroize::Zeroizing;
    if plan.templates.is_empty() {
        return;
    }
    let mut context: BTreeMap<String, Zeroizing<String>> = BTreeMap::new();
    let mut failed: HashMap<String, ErrorKind> = HashMap::new();
    let mut unissued: BTreeSet<String> = BTreeSet::new();
    let as_file: BTreeSet<&EnvName> = plan
        .vars
        .iter()
        .filter(|p| p.as_file.is_some())
        .map(|p| &p.name)
        .collect();
    for v in &resolution.vars {
        match &v.outcome {
            Outcome::Value(value) | Outcome::Default(value) => {
                let shown = if as_file.contains(&v.name) {
                    plan.file_of(&v.name).display().to_string()
                } else {
                    value.expose_secret().to_owned()
                };
                context.insert(v.name.to_string(), Zeroizing::new(shown));
            }
            Outcome::Failed(e) => {
                failed.insert(v.name.to_string(), e.kind);
            }
            Outcome::Unissued => {
                unissued.insert(v.name.to_string());
            }
            Outcome::Absent => {}
        }
    }
    for t in &plan.templates {
        let broken = t.uses.iter().find_map(|n| failed.get(n).map(|k| (n, *k)));
        let outcome = match broken {
            None if t.uses.iter().any(|n| unissued.contains(n)) => {
                unissued.insert(t.name.to_string());
                Outcome::Unissued
            }
            Some((input, kind)) => Outcome::Failed(SecretError::new(
                kind,
                format!("the template uses `{input}`, which did not resolve"),
            )),
            None => match crate::template::render(&t.text, &context) {
                Ok(text) => {
                    let value = SecretString::from(text.as_str());
                    match secret::check_env_value(&t.name, &value) {
                        Ok(()) => {
                            context.insert(t.name.to_string(), text);
                            Outcome::Value(value)
                        }
                        Err(e) => Outcome::Failed(e),
                    }
                }
                Err(e) => Outcome::Failed(SecretError::invalid(format!(
                    "the template{}: {}",
                    e.line.map(|l| format!(" (line {l})")).unwrap_or_default(),
                    e.message
                ))),
            },
        };
        if let Outcome::Failed(e) = &outcome {
            failed.insert(t.name.to_string(), e.kind);
        }
        resolution.vars.push(ResolvedVar {
            name: t.name.clone(),
            backend: "template".into(),
            path: String::new(),
            version: None,
            about: None,
            lease: None,
            outcome,
        });
    }
}

fn batches(plan: &Plan, kept: &Kept) -> Vec<Batch> {
    let mut by_backend: BTreeMap<&str, BTreeSet<Request>> = BTreeMap::new();
    for v in &plan.vars {
        let request = request_of(v);
        if kept
            .held
            .contains_key(&(v.backend.clone(), request.clone()))
        {
            continue;
        }
        by_backend
            .entry(v.backend.as_str())
            .or_default()
            .insert(request);
    }
    by_backend
        .into_iter()
        .filter_map(|(name, requests)| {
            plan.backends.get(name).map(|backend| Batch {
                name: name.to_owned(),
                backend: backend.clone(),
                requests: requests.into_iter().collect(),
            })
        })
        .collect()
}

/// One thread: resolving is I/O-bound and a single-threaded runtime starts in microseconds.
pub fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::os("start the async runtime"))
}

/// Resolves every variable of the plan within `timeout`, outside any async context, giving up
/// at the first terminating signal (`Error::Interrupted`; providers are killed). When every
/// backend in use is local (the usual `--exec` case) no runtime is started: it would be most of
/// secret-run's start-up cost.
pub fn resolve_blocking(
    plan: &Plan,
    timeout: Duration,
    interrupts: &Interrupts,
) -> Result<Resolution, Error> {
    let kept = Kept::none();
    let (round, batches) = Round::new(plan, timeout, &kept);
    if batches
        .iter()
        .all(|b| b.backend.backend.reader().is_local())
    {
        let results = read_on_thread(batches, round.deadline(), interrupts)?;
        return Ok(round.finish(results, &kept));
    }
    let rt = runtime()?;
    let outcome = rt.block_on(async {
        // Watched from a blocking thread: the runtime is shut down without waiting for it.
        let watched = interrupts
            .fd()
            .try_clone_to_owned()
            .map_err(Error::os("watch for signals"))?;
        let interrupted = async {
            loop {
                let Ok(fd) = watched.try_clone() else {
                    return std::future::pending().await;
                };
                let _ = tokio::task::spawn_blocking(move || {
                    wait_readable(&mut [PollFd::new(fd.as_fd(), PollFlags::POLLIN)], None)
                })
                .await;
                if let Some(sig) = interrupts.take() {
                    return sig;
                }
            }
        };
        tokio::select! {
            results = read_async(batches, round.deadline()) => Ok(results),
            sig = interrupted => Err(Error::Interrupted(sig)),
        }
    });
    // A read stuck past the deadline must not hold the exit back; dropping the unfinished
    // reads kills the provider programs still running, and their process groups.
    rt.shutdown_background();
    Ok(round.finish(outcome?, &kept))
}

/// Resolves every variable of the plan within `timeout`, inside a runtime: every backend at
/// once, except the credentials `kept` already holds.
pub async fn resolve(plan: &Plan, timeout: Duration, kept: &Kept) -> Resolution {
    let (round, batches) = Round::new(plan, timeout, kept);
    let results = read_async(batches, round.deadline()).await;
    round.finish(results, kept)
}

/// The local reads, on a thread of their own: a read can block (a file on a hung network
/// filesystem), and the deadline and the signals must still be heard.
fn read_on_thread(
    batches: Vec<Batch>,
    deadline: std::time::Instant,
    interrupts: &Interrupts,
) -> Result<Results, Error> {
    use std::io::{Read, Write};
    let count = batches.len();
    let (tx, rx) = std::sync::mpsc::channel();
    let (mut wake, mut woken) =
        std::os::unix::net::UnixStream::pair().map_err(Error::os("set up the reads"))?;
    let reader = move || {
        for b in batches {
            let result = read_local(&b, deadline);
            if tx.send((b.name, result)).is_err() || wake.write_all(b"r").is_err() {
                break;
            }
        }
    };
    std::thread::Builder::new()
        .name("local-reads".into())
        .spawn(reader)
        .map_err(Error::os("start a thread for the reads"))?;
    let mut results = Results::new();
    while results.len() < count {
        let mut fds = [
            PollFd::new(woken.as_fd(), PollFlags::POLLIN),
            PollFd::new(interrupts.fd(), PollFlags::POLLIN),
        ];
        match wait_readable(&mut fds, Some(deadline)) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(Error::os("wait for the reads")(e)),
        }
        if let Some(sig) = interrupts.take() {
            return Err(Error::Interrupted(sig));
        }
        let mut byte = [0u8; 1];
        if woken.read(&mut byte).unwrap_or(0) == 0 {
            break;
        }
        if let Ok((name, result)) = rx.try_recv() {
            results.insert(name, result);
        }
    }
    Ok(results)
}

/// Every backend at once, in the runtime; local reads on blocking threads, never inline: this
/// runtime also runs the supervisor's event loop, which a read stuck on a hung filesystem must
/// not freeze. Backends with no answer by the deadline are left out (`assemble` says why).
async fn read_async(batches: Vec<Batch>, deadline: std::time::Instant) -> Results {
    let deadline = Instant::from_std(deadline);
    let mut tasks = JoinSet::new();
    let mut task_backend = HashMap::new();
    for batch in batches {
        let name = batch.name.clone();
        let handle = tasks.spawn(async move {
            let name = batch.name.clone();
            let result = if batch.backend.backend.reader().is_local() {
                let until = deadline.into_std();
                tokio::task::spawn_blocking(move || read_local(&batch, until))
                    .await
                    .unwrap_or_else(|_| Err(SecretError::bug("a local read panicked")))
            } else {
                read_remote(&batch, deadline).await
            };
            (name, result)
        });
        task_backend.insert(handle.id(), name);
    }
    let mut results = Results::new();
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next_with_id()).await {
            Ok(Some(Ok((_, (name, result))))) => {
                results.insert(name, result);
            }
            Ok(Some(Err(join_error))) => {
                if let Some(name) = task_backend.get(&join_error.id()) {
                    results.insert(
                        name.clone(),
                        Err(SecretError::bug("a backend's read panicked")),
                    );
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    // Dropping the tasks cancels their requests and kills any provider program still running.
    tasks.abort_all();
    results
}

fn read_local(b: &Batch, deadline: std::time::Instant) -> Result<BackendResults, SecretError> {
    let started = std::time::Instant::now();
    let result = match b.backend.backend.reader() {
        Reader::Local(r) => r.fetch(&b.requests, deadline),
        Reader::Remote(_) => Err(SecretError::bug(
            "a remote backend was read on a local thread",
        )),
    };
    log_answer(b, started.elapsed(), result.is_ok());
    pair(&b.requests, result)
}

async fn read_remote(b: &Batch, deadline: Instant) -> Result<BackendResults, SecretError> {
    let started = Instant::now();
    let result = match b.backend.backend.reader() {
        Reader::Remote(r) => r.fetch(&b.requests, deadline).await,
        Reader::Local(_) => Err(SecretError::bug("a local backend was read in the runtime")),
    };
    log_answer(b, started.elapsed(), result.is_ok());
    pair(&b.requests, result)
}

fn log_answer(b: &Batch, elapsed: Duration, ok: bool) {
    tracing::debug!(
        backend = %b.name,
        kind = b.backend.kind,
        paths = b.requests.len(),
        elapsed_us = elapsed.as_micros() as u64,
        ok,
        "backend answered"
    );
}

/// Matches each request with its result; a backend must return exactly one per request.
fn pair(
    requests: &[Request],
    result: crate::backend::FetchResult,
) -> Result<BackendResults, SecretError> {
    let values = result?;
    if values.len() != requests.len() {
        return Err(SecretError::bug(
            "the backend returned a wrong number of results",
        ));
    }
    Ok(requests.iter().cloned().zip(values).collect())
}

/// Gives each variable its outcome; backends with no answer by the deadline fail as a whole.
fn assemble(
    plan: &Plan,
    mut results: Results,
    names: &[String],
    timeout: Duration,
    issued: &HashMap<(String, Request), Issued>,
) -> Resolution {
    for name in names {
        results.entry(name.clone()).or_insert_with(|| {
            Err(SecretError::unavailable(format!(
                "did not answer within the {} deadline (--timeout)",
                humantime::format_duration(timeout)
            )))
        });
    }
    let mut failures: BTreeMap<String, BackendFailure> = BTreeMap::new();
    let vars = plan
        .vars
        .iter()
        .map(|v| {
            let no_answer = || (Outcome::Failed(SecretError::unavailable("no answer from the backend")), Meta::default());
            let (outcome, meta) = match results.get(&v.backend) {
                Some(Ok(map)) => map.get(&request_of(v)).map_or_else(no_answer, |r| finish(v, r)),
                Some(Err(e)) => {
                    failures
                        .entry(v.backend.clone())
                        .or_insert_with(|| BackendFailure {
                            backend: v.backend.clone(),
                            error: e.clone(),
                            vars: Vec::new(),
                        })
                        .vars
                        .push(v.name.clone());
                    (Outcome::Failed(e.clone()), Meta::default())
                }
                None => no_answer(),
            };
            match &outcome {
                Outcome::Failed(e) => tracing::debug!(var = %v.name, backend = %v.backend, path = %v.path, error = %e, "not resolved"),
                Outcome::Absent => tracing::debug!(var = %v.name, backend = %v.backend, path = %v.path, "optional, absent"),
                Outcome::Default(_) => tracing::debug!(var = %v.name, backend = %v.backend, path = %v.path, "absent, default used"),
                Outcome::Value(_) => tracing::trace!(var = %v.name, backend = %v.backend, path = %v.path, "resolved"),
                Outcome::Unissued => tracing::debug!(var = %v.name, backend = %v.backend, path = %v.path, "issuing endpoint, not read"),
            }
            let lease = matches!(outcome, Outcome::Value(_))
                .then(|| issued.get(&(v.backend.clone(), request_of(v))).map(|i| i.tag))
                .flatten();
            ResolvedVar {
                name: v.name.clone(),
                backend: v.backend.clone(),
                path: v.path.clone(),
                version: meta.version,
                about: meta.about,
                lease,
                outcome,
            }
        })
        .collect();
    Resolution {
        vars,
        backend_failures: failures.into_values().collect(),
        issued: Vec::new(),
    }
}

fn request_of(v: &PlannedVar) -> Request {
    Request {
        path: v.path.clone(),
        version: v.version.clone(),
        params: v.params.clone(),
    }
}

/// What a backend said of the version it read.
#[derive(Default)]
struct Meta {
    version: Option<String>,
    about: Option<String>,
}

/// Applies `key`, the value checks, and `optional`/`default` to one fetched value.
fn finish(v: &PlannedVar, fetched: &Result<Fetched, SecretError>) -> (Outcome, Meta) {
    let (value, meta) = match fetched {
        Ok(f) if f.unissued => {
            let meta = Meta {
                version: None,
                about: f.about.clone(),
            };
            return (Outcome::Unissued, meta);
        }
        Ok(f) => {
            let value = match (&v.key, f.fields) {
                (Some(key), _) => secret::apply_key(&f.value, key),
                (None, true) => secret::only_field(&f.value),
                (None, false) => Ok(f.value.clone()),
            };
            let meta = Meta {
                version: f.version.clone(),
                about: f.about.clone(),
            };
            (value, meta)
        }
        Err(e) => (Err(e.clone()), Meta::default()),
    };
    // A value delivered as a file is not bound by an environment string's limits.
    let checked = value.and_then(|val| match v.as_file {
        Some(_) => Ok(val),
        None => secret::check_env_value(&v.name, &val).map(|()| val),
    });
    let outcome = match checked {
        Ok(val) => Outcome::Value(val),
        Err(e) if e.kind == ErrorKind::NotFound && v.optional => match &v.default {
            Some(d) => Outcome::Default(d.clone()),
            None => Outcome::Absent,
        },
        Err(e) => Outcome::Failed(e),
    };
    (outcome, meta)
}
