//! Backends: where secret values come from.
//!
//! A backend is one module: its typed configuration (a [`Config`], parsed from its manifest table
//! with unknown fields refused), the backend it builds (a [`Backend`]), and a [`Kind`] that names
//! it. [`REGISTRY`] lists the kinds; nothing else in secret-run names one. `docs/architecture.md`
//! lists the lines a new backend adds.
//!
//! Each backend is read-only and batch-first: the resolver hands it every distinct path it must
//! read in one call, so that a backend with a batch API can use it and the others can run their
//! reads concurrently. A backend returns one result per request (so that every missing secret is
//! reported in one run) or fails as a whole (unreachable, unreadable, not authenticated), and it
//! gives up at the deadline it is handed.

#[cfg(feature = "aws")]
pub mod aws;
pub mod command;
pub mod dotenv;
pub mod env;
pub mod file;
pub mod lease;
pub mod program;
pub mod sops;
#[cfg(feature = "vault")]
pub mod vault;

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use secrecy::SecretString;
use serde::de::DeserializeOwned;

pub use self::lease::{Lease, LeaseId};
use crate::error::{Invalid, did_you_mean};
use crate::secret::SecretError;

/// One kind of backend, as the registry knows it.
#[derive(Debug)]
pub struct Kind {
    /// What `kind = "…"` says.
    pub name: &'static str,
    /// Usable without a `[backends.NAME]` table, under its kind's name (`backend = "env"`), with
    /// this configuration; a declaration of that name replaces it.
    pub builtin: Option<fn() -> Box<dyn Config>>,
    /// Types the backend's table (without `kind` and `prefix`, which every kind shares) and
    /// checks what can be checked before anything is read.
    pub parse: fn(toml::Table) -> Result<Box<dyn Config>, Invalid>,
}

/// Every kind this build has. A new backend adds its line here.
pub const REGISTRY: &[Kind] = &[
    env::KIND,
    dotenv::KIND,
    file::KIND,
    command::KIND,
    sops::KIND,
    #[cfg(feature = "vault")]
    vault::KIND,
    #[cfg(feature = "aws")]
    aws::secretsmanager::KIND,
    #[cfg(feature = "aws")]
    aws::ssm::KIND,
];

/// Kinds a lean build leaves out, and the cargo feature that brings each back.
const NOT_BUILT: &[(&str, &str)] = &[
    #[cfg(not(feature = "vault"))]
    ("vault", "vault"),
    #[cfg(not(feature = "aws"))]
    ("aws-secrets-manager", "aws"),
    #[cfg(not(feature = "aws"))]
    ("aws-ssm", "aws"),
];

/// Every kind name a manifest may use, those of a fuller build included (for messages).
pub fn kind_names() -> Vec<&'static str> {
    REGISTRY
        .iter()
        .map(|k| k.name)
        .chain(NOT_BUILT.iter().map(|(name, _)| *name))
        .collect()
}

/// The kind `name` names, or why there is none.
pub fn kind(name: &str) -> Result<&'static Kind, Invalid> {
    if let Some(kind) = REGISTRY.iter().find(|k| k.name == name) {
        return Ok(kind);
    }
    if let Some((_, feature)) = NOT_BUILT.iter().find(|(n, _)| *n == name) {
        return Err(Invalid(format!(
            "this secret-run was built without the `{name}` backend (cargo feature `{feature}`); use a full build"
        )));
    }
    let names = kind_names();
    Err(Invalid(format!(
        "unknown kind `{name}`{}; the kinds are: {}",
        did_you_mean(name, names.iter().copied()),
        names.join(", ")
    )))
}

/// A backend's table as its typed configuration; serde's message, scrubbed of the data it
/// quotes, says what is wrong.
pub fn typed<T: DeserializeOwned>(table: toml::Table) -> Result<T, Invalid> {
    let message = |e: toml::de::Error| crate::error::toml_message(&e);
    // A clone of a backend's few fields, kept for the error's sake.
    let msg = match toml::Value::Table(table.clone()).try_into::<T>() {
        Ok(config) => return Ok(config),
        Err(e) => message(e),
    };
    // Through a `#[serde(flatten)]` part (the AWS backends' common fields) serde's message
    // loses the key: name the field whose value alone gives the same error.
    let culprit = table.iter().find(|(key, value)| {
        let alone = toml::Table::from_iter([((*key).clone(), (*value).clone())]);
        toml::Value::Table(alone)
            .try_into::<T>()
            .is_err_and(|e| message(e) == msg)
    });
    Err(Invalid(match culprit {
        Some((key, _)) if !msg.contains(&format!("`{key}`")) => format!("`{key}`: {msg}"),
        _ => msg,
    }))
}

/// A declared (or built-in) backend's configuration: its kind, and what its table says.
#[derive(Debug, Clone)]
pub struct Spec {
    pub kind: &'static Kind,
    pub config: Arc<dyn Config>,
}

impl Spec {
    pub fn parse(kind: &str, table: toml::Table) -> Result<Spec, Invalid> {
        let kind = self::kind(kind)?;
        Ok(Spec {
            kind,
            config: Arc::from((kind.parse)(table)?),
        })
    }

    /// The backends that exist without being declared.
    pub fn builtins() -> impl Iterator<Item = (&'static str, Spec)> {
        REGISTRY.iter().filter_map(|kind| {
            let config = kind.builtin?;
            Some((
                kind.name,
                Spec {
                    kind,
                    config: Arc::from(config()),
                },
            ))
        })
    }

    /// Refuses a `version` this backend cannot pin.
    pub fn check_version(&self, version: &str) -> Result<(), Invalid> {
        self.config.check_version(version).unwrap_or_else(|| {
            Err(Invalid(format!(
                "kind {} has no versions; remove `version`",
                self.kind.name
            )))
        })
    }

    pub fn build(&self, ctx: &Context) -> Result<Handle, Invalid> {
        Ok(Handle {
            kind: self.kind.name,
            backend: self.config.build(ctx)?,
        })
    }
}

/// What a backend's table says, typed; checked before anything is read.
pub trait Config: std::fmt::Debug + Send + Sync {
    /// Checks a `version` an entry pins. `None`: this kind keeps no versions.
    fn check_version(&self, version: &str) -> Option<Result<(), Invalid>> {
        let _ = version;
        None
    }

    /// Reads issuing endpoints, which an entry's `params` go to.
    fn takes_params(&self) -> bool {
        false
    }

    /// Refuses, before anything is read, a path that this backend can never serve.
    fn check_path(&self, path: &str) -> Result<(), Invalid> {
        let _ = path;
        Ok(())
    }

    /// The backend this configuration describes. Nothing is read or contacted yet.
    fn build(&self, ctx: &Context) -> Result<Arc<dyn Backend>, Invalid>;
}

/// A backend of a plan: built, with the name of its kind.
#[derive(Debug, Clone)]
pub struct Handle {
    pub kind: &'static str,
    pub backend: Arc<dyn Backend>,
}

/// A backend, built from its configuration.
pub trait Backend: std::fmt::Debug + Send + Sync {
    /// How it reads: this decides where the resolver runs its reads.
    fn reader(&self) -> Reader<'_>;

    /// Variables holding the credentials this backend used: the child does not inherit them
    /// unless the manifest asks for them.
    fn consumed_env(&self) -> Vec<String> {
        Vec::new()
    }

    /// Keeps credentials valid while a supervised child runs (renews a Vault login token);
    /// `None` for a backend with nothing to keep.
    fn keep_alive(&self) -> Option<BoxFuture<'_, ()>> {
        None
    }

    /// Extends a lease this backend issued by `increment`: the duration granted, which may be
    /// shorter (its maximum is near). Only backends that hand out leases are asked.
    fn renew<'a>(
        &'a self,
        lease: &'a LeaseId,
        increment: std::time::Duration,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<std::time::Duration, SecretError>> {
        let _ = (lease, increment, deadline);
        Box::pin(async {
            Err(SecretError::bug(
                "a lease was renewed on a backend without leases",
            ))
        })
    }

    /// Ends a lease this backend issued (the database user is dropped, the token revoked).
    fn revoke<'a>(
        &'a self,
        lease: &'a LeaseId,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<(), SecretError>> {
        let _ = (lease, deadline);
        Box::pin(async {
            Err(SecretError::bug(
                "a lease was revoked on a backend without leases",
            ))
        })
    }

    /// A reload the operator asked for (the reload signal) is coming: forget what was kept from
    /// earlier reads (a decrypted file), so that it is read afresh. A `watch` tick does not.
    fn refresh(&self) {}

    /// How values are written (`put`, `migrate`); `None`: this kind cannot be written.
    fn writer(&self) -> Option<&dyn WriteValue> {
        None
    }

    /// API calls made so far and how many were throttled, for a backend with a call quota.
    fn calls(&self) -> Option<Calls> {
        None
    }

    /// Restart slots shared by a fleet (`[run] max_concurrent_restarts`): vault only.
    fn slots(&self) -> Option<&dyn Slots> {
        None
    }

    /// How a value is rotated (`rotate`): only kinds that keep versions to go back to.
    fn rotation(&self) -> Option<&dyn Rotate> {
        None
    }

    /// The current login's number and its token's end (see `Lease::bound`).
    fn token_end(&self) -> Option<(u64, std::time::SystemTime)> {
        None
    }

    /// Leases no child uses any more are revoked (`revoke = false` on a vault backend: left to
    /// expire).
    fn revokes(&self) -> bool {
        true
    }
}

/// How a backend reads, which is where the resolver runs it.
#[derive(Debug, Clone, Copy)]
pub enum Reader<'a> {
    /// Reads from this process and its files (the environment, a `.env`, mounted files): no
    /// network, no runtime. They can still block (a hung network filesystem), so the resolver
    /// runs them on a thread of their own, where the deadline and signals cut them off; when
    /// every backend of a run is local, no async runtime is started at all.
    Local(&'a dyn LocalRead),
    /// Reads over the network or through provider programs, in the async runtime.
    Remote(&'a dyn RemoteRead),
}

impl Reader<'_> {
    pub fn is_local(self) -> bool {
        matches!(self, Reader::Local(_))
    }
}

impl std::fmt::Debug for dyn LocalRead + '_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalRead")
    }
}

impl std::fmt::Debug for dyn RemoteRead + '_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RemoteRead")
    }
}

pub trait LocalRead: Sync {
    /// One result per request, in order, or a failure of the whole backend. Reads of FIFOs
    /// and devices stop at `deadline` by themselves.
    fn fetch(&self, requests: &[Request], deadline: std::time::Instant) -> FetchResult;
}

pub trait RemoteRead: Sync {
    /// One result per request, in order, or a failure of the whole backend; gives up at
    /// `deadline` with an `Unavailable` error that says so.
    fn fetch<'a>(
        &'a self,
        requests: &'a [Request],
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'a, FetchResult>;
}

/// A value to write, at an entry's full path.
#[derive(Debug)]
pub struct Put {
    pub path: String,
    /// Only this field of the JSON object there (read, set, written back).
    pub key: Option<crate::secret::Key>,
    pub value: SecretString,
    /// Check-and-set: write only over this version (Vault KV v2); `None`: over the version
    /// read just before.
    pub cas: Option<u64>,
    /// Write only where nothing is yet (`migrate` without `--overwrite`): `Conflict` otherwise.
    pub create_only: bool,
}

/// What a write made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The new version, when the backend keeps versions.
    pub version: Option<String>,
}

pub trait WriteValue: Sync {
    /// Writes one value as a new version; gives up at `deadline`.
    fn put<'a>(
        &'a self,
        put: &'a Put,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<Written, SecretError>>;
}

/// A backend's API calls (every attempt) and those refused for their rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calls {
    pub calls: usize,
    pub throttled: usize,
}

/// A semaphore a fleet shares through its backend: `n` slots, each held until it expires.
pub trait Slots: Sync {
    /// Takes (or renews) a slot at `path` for `holder`, for `ttl`; `Ok(false)` when all `n` are
    /// held by others.
    fn acquire<'a>(
        &'a self,
        path: &'a str,
        n: u32,
        holder: &'a str,
        ttl: std::time::Duration,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<bool, SecretError>>;

    /// Gives `holder`'s slot back.
    fn release<'a>(
        &'a self,
        path: &'a str,
        holder: &'a str,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<(), SecretError>>;
}

/// A new version written for `rotate`, not yet confirmed.
#[derive(Debug)]
pub struct Pending {
    pub path: String,
    pub new: String,
    pub previous: Option<String>,
    /// Reads see it already (Vault: the newest version is read). Otherwise only once promoted
    /// (Secrets Manager: it carries AWSPENDING, reads get AWSCURRENT).
    pub visible: bool,
    /// What rolling back writes again: the previous version's content (Vault).
    pub restore: Option<SecretString>,
}

/// The steps of a rotation: a pending version, then promoted or rolled back.
pub trait Rotate: Sync {
    fn pending<'a>(
        &'a self,
        put: &'a Put,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<Pending, SecretError>>;

    /// Makes the pending version the one reads get, keeping the previous one reachable.
    fn promote<'a>(
        &'a self,
        pending: &'a Pending,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<(), SecretError>>;

    /// Makes reads get the previous value again.
    fn roll_back<'a>(
        &'a self,
        pending: &'a Pending,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'a, Result<(), SecretError>>;
}

/// Refuses a write that must not replace a value (`Put::create_only`).
pub fn check_create_only(put: &Put, exists: bool, at: &str) -> Result<(), SecretError> {
    if put.create_only && exists {
        return Err(SecretError::new(
            crate::secret::ErrorKind::Conflict,
            format!("{at} already holds a value (not overwritten; --overwrite replaces it)"),
        ));
    }
    Ok(())
}

/// `text` (a `prefix`, a file name) with `{env}` replaced by `--env` / SECRET_RUN_ENV; `what`
/// names the setting in messages.
pub fn expand_env(what: &str, text: &str, env_name: Option<&str>) -> Result<String, Invalid> {
    let prefix = text;
    let mut out = String::new();
    let mut rest = prefix;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let Some(end) = after.find('}') else {
            return Err(Invalid(format!("{what} `{prefix}` has an unclosed `{{`")));
        };
        match &after[1..end] {
            "env" => match env_name {
                Some(e) if !e.is_empty() => out.push_str(e),
                _ => {
                    return Err(Invalid(format!(
                        "{what} `{prefix}` uses {{env}}, but no environment was given: pass --env NAME or set SECRET_RUN_ENV"
                    )));
                }
            },
            other => {
                return Err(Invalid(format!(
                    "{what} `{prefix}` has an unknown placeholder `{{{other}}}`; only {{env}} is replaced"
                )));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// What the backends need from outside their own table.
#[derive(Debug)]
pub struct Context {
    /// Relative paths in the manifest are relative to the manifest's directory.
    pub base_dir: PathBuf,
    /// Read endpoints that create credentials; when `false` they are reported, not read.
    pub issue: bool,
    /// `--env` / SECRET_RUN_ENV, for `{env}` in a backend's settings (a sops `file`).
    pub env_name: Option<String>,
}

/// One distinct read: a full path (prefix applied), an optional version, and what an issuing
/// endpoint is asked for (canonical JSON): entries equal in all three share one answer, so the
/// `username` and `password` of one database credential belong together.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Request {
    pub path: String,
    pub version: Option<String>,
    pub params: Option<String>,
}

/// A value as a backend read it, with what the backend knows of its version (for `check`).
#[derive(Debug)]
pub struct Fetched {
    pub value: SecretString,
    /// The value is a JSON object of named fields (a Vault secret): without `key`, its only
    /// field or its field `value` is used.
    pub fields: bool,
    pub version: Option<String>,
    /// What else the backend says of this version, for `check`: when it was written, its
    /// stages. Never anything derived from the value.
    pub about: Option<String>,
    /// An issued credential's lease or validity: the supervisor renews, replaces and revokes it.
    pub lease: Option<Lease>,
    /// An endpoint that would create a credential, not read (`check` without `--issue`).
    pub unissued: bool,
}

impl Fetched {
    pub fn new(value: SecretString) -> Self {
        Fetched {
            value,
            fields: false,
            version: None,
            about: None,
            lease: None,
            unissued: false,
        }
    }

    pub fn fields(value: SecretString, version: Option<String>, about: Option<String>) -> Self {
        Fetched {
            fields: true,
            version,
            about,
            ..Fetched::new(value)
        }
    }

    /// An issuing endpoint left unread; `about` says what it is.
    pub fn unissued(about: String) -> Self {
        Fetched {
            about: Some(about),
            unissued: true,
            ..Fetched::new(SecretString::from(""))
        }
    }

    /// A copy, for a credential kept across reloads.
    pub fn copy(&self) -> Fetched {
        Fetched {
            value: self.value.clone(),
            fields: self.fields,
            version: self.version.clone(),
            about: self.about.clone(),
            lease: self.lease.clone(),
            unissued: self.unissued,
        }
    }
}

/// What a backend read before, by request, with the version it was: a re-read (a `watch` tick,
/// a restart) asks only which version is current and reuses the value when it did not move.
/// Pinned requests are not kept. Forgotten on `Backend::refresh` (the reload signal).
#[derive(Debug)]
pub struct Seen<V> {
    read: std::sync::Mutex<std::collections::HashMap<Request, (V, Fetched)>>,
}

impl<V> Default for Seen<V> {
    fn default() -> Self {
        Seen {
            read: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl<V: Clone + PartialEq> Seen<V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Request, (V, Fetched)>> {
        self.read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The version `request` was read at, when it was read before.
    pub fn version(&self, request: &Request) -> Option<V> {
        self.lock().get(request).map(|(v, _)| v.clone())
    }

    /// The value read before, when `current` is still its version.
    pub fn unchanged(&self, request: &Request, current: &V) -> Option<Fetched> {
        self.lock()
            .get(request)
            .filter(|(v, _)| v == current)
            .map(|(_, f)| f.copy())
    }

    pub fn remember(&self, request: &Request, version: V, fetched: &Fetched) {
        if request.version.is_none() {
            self.lock()
                .insert(request.clone(), (version, fetched.copy()));
        }
    }

    pub fn forget(&self) {
        self.lock().clear();
    }
}

/// Outer error: the backend failed as a whole. Inner: one result per request, in order.
pub type FetchResult = Result<Vec<Result<Fetched, SecretError>>, SecretError>;

/// `2026-11-26T04:31:18.210226672Z` → `2026-11-26T04:31:18Z`, for `check`: the fraction of a
/// second says nothing to a reader. `None` for an empty time.
#[cfg_attr(not(any(feature = "vault", feature = "aws")), allow(dead_code))]
pub fn whole_seconds(time: &str) -> Option<String> {
    if time.is_empty() {
        return None;
    }
    Some(match time.split_once('.') {
        Some((whole, rest)) if rest.ends_with('Z') => format!("{whole}Z"),
        _ => time.to_owned(),
    })
}

/// Puts the results of a batch (keyed by request index, in any order) in request order, and
/// turns one error shared by every request (no credentials, no network) into one backend
/// failure, so that it is said once rather than once per variable.
pub fn in_order(
    mut results: std::collections::HashMap<usize, Result<Fetched, SecretError>>,
    count: usize,
) -> FetchResult {
    let ordered: Vec<Result<Fetched, SecretError>> = (0..count)
        .map(|i| {
            results
                .remove(&i)
                .unwrap_or_else(|| Err(SecretError::bug("a read of the batch got no answer")))
        })
        .collect();
    if let Some(Err(first)) = ordered.first() {
        let shared = ordered
            .iter()
            .all(|r| r.as_ref().is_err_and(|e| e == first));
        if shared && first.kind != crate::secret::ErrorKind::NotFound {
            return Err(first.clone());
        }
    }
    Ok(ordered)
}
