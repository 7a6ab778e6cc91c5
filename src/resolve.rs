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

use crate::backend::{Backend, Fetched, Request};
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

    /// An outage explains the rest, so it wins; then a refusal; then missing or invalid values.
    pub fn exit_code(&self) -> u8 {
        let kinds: Vec<ErrorKind> = self.kinds().collect();
        [
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

/// Resolves every variable of the plan within `timeout`.
pub async fn resolve(plan: &Plan, timeout: Duration) -> Resolution {
    let started = Instant::now();
    let deadline = started + timeout;

    let mut batches: BTreeMap<&str, BTreeSet<Request>> = BTreeMap::new();
    for v in &plan.vars {
        batches
            .entry(v.backend.as_str())
            .or_default()
            .insert(request_of(v));
    }
    tracing::debug!(
        variables = plan.vars.len(),
        backends = batches.len(),
        timeout_ms = timeout.as_millis() as u64,
        "resolving"
    );

    let mut tasks = JoinSet::new();
    let mut task_backend = HashMap::new();
    for (name, requests) in batches {
        let Some(backend) = plan.backends.get(name).map(Arc::clone) else {
            continue;
        };
        let requests: Vec<Request> = requests.into_iter().collect();
        let handle = tasks.spawn(fetch_batch(name.to_owned(), backend, requests, deadline));
        task_backend.insert(handle.id(), name.to_owned());
    }

    let mut results: HashMap<String, Result<BackendResults, SecretError>> = HashMap::new();
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next_with_id()).await {
            Ok(Some(Ok((_, (name, result))))) => {
                results.insert(name, result);
            }
            Ok(Some(Err(join_error))) => {
                if let Some(name) = task_backend.get(&join_error.id()) {
                    results.insert(
                        name.clone(),
                        Err(SecretError::unavailable("the backend failed unexpectedly (a bug in secret-run; please report it)")),
                    );
                }
            }
            Ok(None) => break,
            Err(_) => break,
        }
    }
    tasks.abort_all();
    for name in task_backend.values() {
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
            let no_answer = || (Outcome::Failed(SecretError::unavailable("no answer from the backend")), None);
            let (outcome, version) = match results.get(&v.backend) {
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
                    (Outcome::Failed(e.clone()), None)
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
                version,
                outcome,
            }
        })
        .collect();
    tracing::debug!(
        elapsed_us = started.elapsed().as_micros() as u64,
        "resolve finished"
    );
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

async fn fetch_batch(
    name: String,
    backend: Arc<Backend>,
    requests: Vec<Request>,
    deadline: Instant,
) -> (String, Result<BackendResults, SecretError>) {
    let started = Instant::now();
    let result = backend.fetch(&requests, deadline).await;
    tracing::debug!(
        backend = %name,
        kind = backend.kind(),
        paths = requests.len(),
        elapsed_us = started.elapsed().as_micros() as u64,
        ok = result.is_ok(),
        "backend answered"
    );
    let result = result.and_then(|values| {
        if values.len() != requests.len() {
            return Err(SecretError::unavailable(
                "the backend returned a wrong number of results (a bug in secret-run; please report it)",
            ));
        }
        Ok(requests.into_iter().zip(values).collect())
    });
    (name, result)
}

/// Applies `key`, the value checks, and `optional`/`default` to one fetched value.
fn finish(v: &PlannedVar, fetched: &Result<Fetched, SecretError>) -> (Outcome, Option<String>) {
    let (value, version) = match fetched {
        Ok(f) => {
            let value = match &v.key {
                Some(key) => secret::apply_key(&f.value, key),
                None => Ok(f.value.clone()),
            };
            (value, f.version.clone())
        }
        Err(e) => (Err(e.clone()), None),
    };
    let outcome = match value.and_then(|val| secret::check_env_value(&v.name, &val).map(|()| val)) {
        Ok(val) => Outcome::Value(val),
        Err(e) if e.kind == ErrorKind::NotFound && v.optional => match &v.default {
            Some(d) => Outcome::Default(d.clone()),
            None => Outcome::Absent,
        },
        Err(e) => Outcome::Failed(e),
    };
    (outcome, version)
}
