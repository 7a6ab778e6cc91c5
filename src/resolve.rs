//! Resolution: every backend in use is asked at once, one batch per backend, under one deadline;
//! each variable then gets its value, its default, nothing (optional), or an error. Every problem
//! of a run is collected, so that three missing secrets are one error listing three.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio::task::JoinSet;
use tokio::time::Instant;

use nix::poll::{PollFd, PollFlags};
use std::os::fd::AsFd;

use crate::backend::{Backend, Fetched, Request};
use crate::error::Error;
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
    pub outcome: Outcome,
}

impl ResolvedVar {
    pub fn value(&self) -> Option<&SecretString> {
        match &self.outcome {
            Outcome::Value(v) | Outcome::Default(v) => Some(v),
            Outcome::Absent | Outcome::Failed(_) => None,
        }
    }
}

/// A backend that failed as a whole, and the variables that needed it.
#[derive(Debug)]
pub struct BackendFailure {
    pub backend: String,
    pub error: SecretError,
    pub vars: Vec<EnvName>,
}

#[derive(Debug)]
pub struct Resolution {
    pub vars: Vec<ResolvedVar>,
    pub backend_failures: Vec<BackendFailure>,
}

impl Resolution {
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

#[derive(Debug)]
pub struct VarProblem {
    pub name: EnvName,
    pub backend: String,
    pub path: String,
    pub error: SecretError,
}

/// Every problem of one resolve, for the error message and the exit code.
#[derive(Debug)]
pub struct ResolveFailure {
    pub backends: Vec<BackendFailure>,
    pub vars: Vec<VarProblem>,
}

impl ResolveFailure {
    fn kinds(&self) -> impl Iterator<Item = ErrorKind> + '_ {
        self.backends
            .iter()
            .map(|b| b.error.kind)
            .chain(self.vars.iter().map(|v| v.error.kind))
    }

    /// A backend that cannot even be configured explains the rest, then an outage, then a
    /// refusal, then missing or invalid values.
    pub fn exit_code(&self) -> u8 {
        let kinds: Vec<ErrorKind> = self.kinds().collect();
        [
            ErrorKind::Misconfigured,
            ErrorKind::Unavailable,
            ErrorKind::PermissionDenied,
            ErrorKind::NotFound,
            ErrorKind::Invalid,
        ]
        .into_iter()
        .find(|k| kinds.contains(k))
        .unwrap_or(ErrorKind::NotFound)
        .exit_code()
    }
}

impl fmt::Display for ResolveFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.vars.len() + self.backends.iter().map(|b| b.vars.len()).sum::<usize>();
        write!(
            f,
            "cannot resolve {count} secret{}:",
            if count == 1 { "" } else { "s" }
        )?;
        for b in &self.backends {
            let names: Vec<&str> = b.vars.iter().map(EnvName::as_str).collect();
            write!(
                f,
                "\n  backend `{}`: {}\n    needed by {}",
                b.backend,
                b.error,
                names.join(", ")
            )?;
        }
        for v in &self.vars {
            write!(
                f,
                "\n  {} (backend `{}`, path `{}`): {}",
                v.name, v.backend, v.path, v.error
            )?;
        }
        Ok(())
    }
}

type BackendResults = HashMap<Request, Result<Fetched, SecretError>>;
type Results = HashMap<String, Result<BackendResults, SecretError>>;

/// The distinct reads one backend must do.
struct Batch {
    name: String,
    backend: Arc<Backend>,
    requests: Vec<Request>,
}

fn batches(plan: &Plan) -> Vec<Batch> {
    let mut by_backend: BTreeMap<&str, BTreeSet<Request>> = BTreeMap::new();
    for v in &plan.vars {
        by_backend
            .entry(v.backend.as_str())
            .or_default()
            .insert(request_of(v));
    }
    by_backend
        .into_iter()
        .filter_map(|(name, requests)| {
            plan.backends.get(name).map(|backend| Batch {
                name: name.to_owned(),
                backend: Arc::clone(backend),
                requests: requests.into_iter().collect(),
            })
        })
        .collect()
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
    if plan.backends.values().all(|b| b.is_local()) {
        return resolve_local(plan, timeout, interrupts);
    }
    let rt = crate::app::runtime()?;
    let outcome = rt.block_on(async {
        // Watched from a blocking thread: the runtime is shut down without waiting for it.
        let watched = interrupts
            .fd()
            .try_clone_to_owned()
            .map_err(|e| Error::Internal(format!("cannot watch for signals: {e}")))?;
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
            resolution = resolve(plan, timeout) => Ok(resolution),
            sig = interrupted => Err(Error::Interrupted(sig)),
        }
    });
    // A read stuck past the deadline must not hold the exit back; dropping the unfinished
    // reads kills the provider programs still running, and their process groups.
    rt.shutdown_background();
    outcome
}

/// The local reads, on a thread of their own: a read can block (a file on a hung network
/// filesystem), and the deadline and the signals must still be heard.
fn resolve_local(
    plan: &Plan,
    timeout: Duration,
    interrupts: &Interrupts,
) -> Result<Resolution, Error> {
    use std::io::{Read, Write};
    let started = std::time::Instant::now();
    let deadline = started + timeout;
    let batches = batches(plan);
    let names: Vec<String> = batches.iter().map(|b| b.name.clone()).collect();
    tracing::debug!(
        variables = plan.vars.len(),
        backends = names.len(),
        "resolving (local backends)"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let (mut wake, mut woken) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| Error::Internal(format!("cannot set up the reads: {e}")))?;
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
        .map_err(|e| Error::Internal(format!("cannot start a thread for the reads: {e}")))?;
    let mut results = Results::new();
    while results.len() < names.len() {
        let mut fds = [
            PollFd::new(woken.as_fd(), PollFlags::POLLIN),
            PollFd::new(interrupts.fd(), PollFlags::POLLIN),
        ];
        match wait_readable(&mut fds, Some(deadline)) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(Error::Internal(format!("cannot wait for the reads: {e}"))),
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
    tracing::debug!(
        elapsed_us = started.elapsed().as_micros() as u64,
        "reads finished"
    );
    Ok(assemble(plan, results, &names, timeout))
}

fn read_local(b: &Batch, deadline: std::time::Instant) -> Result<BackendResults, SecretError> {
    let started = std::time::Instant::now();
    let result = b
        .backend
        .fetch_local(&b.requests, deadline)
        .unwrap_or_else(|| Err(bug("a remote backend was read as local")));
    log_answer(b, started.elapsed(), result.is_ok());
    pair(&b.requests, result)
}

async fn read_remote(b: &Batch, deadline: Instant) -> Result<BackendResults, SecretError> {
    let started = Instant::now();
    let result = b
        .backend
        .fetch_remote(&b.requests, deadline)
        .await
        .unwrap_or_else(|| Err(bug("a local backend was read as remote")));
    log_answer(b, started.elapsed(), result.is_ok());
    pair(&b.requests, result)
}

fn bug(what: &str) -> SecretError {
    SecretError::unavailable(format!("{what} (a bug in secret-run; please report it)"))
}

fn log_answer(b: &Batch, elapsed: Duration, ok: bool) {
    tracing::debug!(
        backend = %b.name,
        kind = b.backend.kind(),
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
        return Err(bug("the backend returned a wrong number of results"));
    }
    Ok(requests.iter().cloned().zip(values).collect())
}

/// Resolves every variable of the plan within `timeout`, inside a runtime: every backend at once.
pub async fn resolve(plan: &Plan, timeout: Duration) -> Resolution {
    let started = Instant::now();
    let deadline = started + timeout;
    let batches = batches(plan);
    let names: Vec<String> = batches.iter().map(|b| b.name.clone()).collect();
    tracing::debug!(
        variables = plan.vars.len(),
        backends = names.len(),
        "resolving"
    );

    let mut tasks = JoinSet::new();
    let mut task_backend = HashMap::new();
    for batch in batches {
        let name = batch.name.clone();
        let handle = tasks.spawn(async move {
            let name = batch.name.clone();
            // Never inline here, unlike `resolve_local`: this runtime also runs the supervisor's
            // event loop, which a read stuck on a hung filesystem must not freeze.
            let result = if batch.backend.is_local() {
                let until = deadline.into_std();
                tokio::task::spawn_blocking(move || read_local(&batch, until))
                    .await
                    .unwrap_or_else(|_| Err(bug("a local read failed unexpectedly")))
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
                    results.insert(name.clone(), Err(bug("the backend failed unexpectedly")));
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    // Dropping the tasks cancels their requests and kills any provider program still running.
    tasks.abort_all();
    tracing::debug!(
        elapsed_us = started.elapsed().as_micros() as u64,
        "resolve finished"
    );
    assemble(plan, results, &names, timeout)
}

/// Gives each variable its outcome; backends with no answer by the deadline fail as a whole.
fn assemble(plan: &Plan, mut results: Results, names: &[String], timeout: Duration) -> Resolution {
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
            }
            ResolvedVar {
                name: v.name.clone(),
                backend: v.backend.clone(),
                path: v.path.clone(),
                version: meta.version,
                about: meta.about,
                outcome,
            }
        })
        .collect();
    Resolution {
        vars,
        backend_failures: failures.into_values().collect(),
    }
}

fn request_of(v: &PlannedVar) -> Request {
    Request {
        path: v.path.clone(),
        version: v.version.clone(),
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
    let outcome = match value.and_then(|val| secret::check_env_value(&v.name, &val).map(|()| val)) {
        Ok(val) => Outcome::Value(val),
        Err(e) if e.kind == ErrorKind::NotFound && v.optional => match &v.default {
            Some(d) => Outcome::Default(d.clone()),
            None => Outcome::Absent,
        },
        Err(e) => Outcome::Failed(e),
    };
    (outcome, meta)
}
