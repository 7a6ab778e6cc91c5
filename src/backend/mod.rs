//! Backends: where secret values come from.
//!
//! Each backend is read-only and batch-first: the resolver hands it every distinct path it must
//! read in one call, so that a backend with a batch API can use it and the others can run their
//! reads concurrently. A backend returns one result per request (so that every missing secret is
//! reported in one run) or fails as a whole (unreachable, unreadable, not authenticated).
//!
//! Dispatch is an enum rather than a trait object: the set of backends is closed, and `async fn`
//! in an enum needs no boxing.

#[cfg(feature = "aws")]
pub mod aws;
pub mod command;
pub mod dotenv;
pub mod env;
pub mod file;
#[cfg(feature = "vault")]
pub mod vault;

use std::path::PathBuf;

use secrecy::SecretString;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::error::did_you_mean;
use crate::secret::SecretError;

/// Every `kind` a `[backends.NAME]` table may have.
pub const KINDS: &[&str] = &[
    "env",
    "dotenv",
    "file",
    "command",
    "vault",
    "aws-secrets-manager",
    "aws-ssm",
];

/// Backends that exist without being declared; a declaration of the same name replaces them.
pub const BUILTIN: &[&str] = &["env", "dotenv"];

/// The configuration of one declared backend, typed by its `kind`.
#[derive(Debug, Clone)]
pub enum BackendConfig {
    Env(env::Config),
    Dotenv(dotenv::Config),
    File(file::Config),
    Command(command::Config),
    #[cfg(feature = "vault")]
    Vault(Box<vault::Config>),
    #[cfg(feature = "aws")]
    SecretsManager(Box<aws::secretsmanager::Config>),
    #[cfg(feature = "aws")]
    Ssm(Box<aws::ssm::Config>),
}

fn typed<T: DeserializeOwned>(table: toml::Table) -> Result<T, String> {
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| crate::error::toml_message(&e))
}

impl BackendConfig {
    /// Types a backend table (without its `kind` and `prefix`, which every kind shares).
    pub fn parse(kind: &str, table: toml::Table) -> Result<BackendConfig, String> {
        match kind {
            "env" => typed(table).map(BackendConfig::Env),
            "dotenv" => typed(table).map(BackendConfig::Dotenv),
            "file" => typed(table).map(BackendConfig::File),
            "command" => typed::<command::Config>(table)
                .and_then(|c| c.validate().map(|()| c))
                .map(BackendConfig::Command),
            #[cfg(feature = "vault")]
            "vault" => typed::<vault::Config>(table)
                .and_then(|c| c.validate().map(|()| c))
                .map(|c| BackendConfig::Vault(Box::new(c))),
            #[cfg(feature = "aws")]
            "aws-secrets-manager" => typed::<aws::secretsmanager::Config>(table)
                .and_then(|c| c.common.validate().map(|()| c))
                .map(|c| BackendConfig::SecretsManager(Box::new(c))),
            #[cfg(feature = "aws")]
            "aws-ssm" => typed::<aws::ssm::Config>(table)
                .and_then(|c| c.common.validate().map(|()| c))
                .map(|c| BackendConfig::Ssm(Box::new(c))),
            #[allow(unreachable_patterns)]
            "vault" | "aws-secrets-manager" | "aws-ssm" => Err(format!(
                "this secret-run was built without the `{kind}` backend (cargo features `vault`, `aws`); use a full build"
            )),
            other => Err(format!(
                "unknown kind `{other}`{}; the kinds are: {}",
                did_you_mean(other, KINDS.iter().copied()),
                KINDS.join(", ")
            )),
        }
    }

    pub fn builtin(name: &str) -> Option<BackendConfig> {
        match name {
            "env" => Some(BackendConfig::Env(env::Config::default())),
            "dotenv" => Some(BackendConfig::Dotenv(dotenv::Config::default())),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            BackendConfig::Env(_) => "env",
            BackendConfig::Dotenv(_) => "dotenv",
            BackendConfig::File(_) => "file",
            BackendConfig::Command(_) => "command",
            #[cfg(feature = "vault")]
            BackendConfig::Vault(_) => "vault",
            #[cfg(feature = "aws")]
            BackendConfig::SecretsManager(_) => "aws-secrets-manager",
            #[cfg(feature = "aws")]
            BackendConfig::Ssm(_) => "aws-ssm",
        }
    }

    /// Refuses a `version` this backend cannot pin; `Ok` when it can.
    pub fn check_version(&self, version: &str) -> Result<(), String> {
        let _ = version; // unused when no backend with versions is built in
        match self {
            #[cfg(feature = "vault")]
            BackendConfig::Vault(c) => c.check_version(version),
            #[cfg(feature = "aws")]
            BackendConfig::SecretsManager(_) | BackendConfig::Ssm(_) => {
                if version.trim().is_empty() {
                    Err("`version` cannot be empty".into())
                } else {
                    Ok(())
                }
            }
            _ => Err(format!(
                "kind {} has no versions; remove `version`",
                self.kind()
            )),
        }
    }

    /// Refuses, before anything is read, a path that this backend can never serve.
    pub fn check_path(&self, path: &str) -> Result<(), String> {
        match self {
            BackendConfig::File(_) => file::check_relative(path),
            _ => Ok(()),
        }
    }
}

/// What the backends need from outside their own table.
#[derive(Debug)]
pub struct Context {
    /// Relative paths in the manifest are relative to the manifest's directory.
    pub base_dir: PathBuf,
}

/// One distinct read: a full path (prefix applied) and an optional version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Request {
    pub path: String,
    pub version: Option<String>,
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
}

impl Fetched {
    pub fn new(value: SecretString) -> Self {
        Fetched {
            value,
            fields: false,
            version: None,
            about: None,
        }
    }

    pub fn fields(value: SecretString, version: Option<String>, about: Option<String>) -> Self {
        Fetched {
            value,
            fields: true,
            version,
            about,
        }
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
                .unwrap_or_else(|| Err(SecretError::unavailable("no answer for this read")))
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

#[derive(Debug)]
pub enum Backend {
    Env(env::EnvBackend),
    Dotenv(dotenv::DotenvBackend),
    File(file::FileBackend),
    Command(command::CommandBackend),
    #[cfg(feature = "vault")]
    Vault(Box<vault::VaultBackend>),
    #[cfg(feature = "aws")]
    SecretsManager(Box<aws::secretsmanager::SecretsManager>),
    #[cfg(feature = "aws")]
    Ssm(Box<aws::ssm::Ssm>),
}

impl Backend {
    pub fn new(config: &BackendConfig, ctx: &Context) -> Result<Backend, String> {
        Ok(match config {
            BackendConfig::Env(c) => Backend::Env(env::EnvBackend::new(c)),
            BackendConfig::Dotenv(c) => Backend::Dotenv(dotenv::DotenvBackend::new(c, ctx)),
            BackendConfig::File(c) => Backend::File(file::FileBackend::new(c, ctx)?),
            BackendConfig::Command(c) => Backend::Command(command::CommandBackend::new(c)),
            #[cfg(feature = "vault")]
            BackendConfig::Vault(c) => Backend::Vault(Box::new(vault::VaultBackend::new(c, ctx)?)),
            #[cfg(feature = "aws")]
            BackendConfig::SecretsManager(c) => {
                Backend::SecretsManager(Box::new(aws::secretsmanager::SecretsManager::new(c)))
            }
            #[cfg(feature = "aws")]
            BackendConfig::Ssm(c) => Backend::Ssm(Box::new(aws::ssm::Ssm::new(c))),
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Env(_) => "env",
            Backend::Dotenv(_) => "dotenv",
            Backend::File(_) => "file",
            Backend::Command(_) => "command",
            #[cfg(feature = "vault")]
            Backend::Vault(_) => "vault",
            #[cfg(feature = "aws")]
            Backend::SecretsManager(_) => "aws-secrets-manager",
            #[cfg(feature = "aws")]
            Backend::Ssm(_) => "aws-ssm",
        }
    }

    /// Where a path is read from, for messages: the variable, the file, the program.
    pub fn locate(&self, path: &str) -> String {
        match self {
            Backend::Env(_) => format!("variable {}", crate::secret::path_to_var(path)),
            Backend::Dotenv(b) => format!(
                "{} in {}",
                crate::secret::path_to_var(path),
                b.path().display()
            ),
            Backend::File(b) => b.dir().join(path).display().to_string(),
            Backend::Command(b) => format!("`{}`", b.program()),
            #[cfg(feature = "vault")]
            Backend::Vault(b) => b.locate(path),
            #[cfg(feature = "aws")]
            Backend::SecretsManager(_) => format!("secret `{path}`"),
            #[cfg(feature = "aws")]
            Backend::Ssm(_) => format!("parameter `{path}`"),
        }
    }

    /// Local backends (process environment, files) answer without a network or a runtime.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            Backend::Env(_) | Backend::Dotenv(_) | Backend::File(_)
        )
    }

    /// Reads from a local backend; `None` for the others. Such a read can still block (a file on
    /// a hung network filesystem), so callers run it where the deadline can cut it off; reads of
    /// FIFOs and devices stop at `deadline` by themselves.
    pub fn fetch_local(
        &self,
        requests: &[Request],
        deadline: std::time::Instant,
    ) -> Option<FetchResult> {
        match self {
            Backend::Env(b) => Some(Ok(b.fetch(requests))),
            Backend::Dotenv(b) => Some(b.fetch(requests, deadline)),
            Backend::File(b) => Some(Ok(b.fetch(requests, deadline))),
            _ => None,
        }
    }

    /// Reads from a backend that is not local; local ones are read with `fetch_local`.
    pub async fn fetch_remote(
        &self,
        requests: &[Request],
        deadline: Instant,
    ) -> Option<FetchResult> {
        match self {
            Backend::Command(b) => Some(Ok(b.fetch(requests, deadline).await)),
            #[cfg(feature = "vault")]
            Backend::Vault(b) => Some(b.fetch(requests, deadline).await),
            #[cfg(feature = "aws")]
            Backend::SecretsManager(b) => Some(b.fetch(requests, deadline).await),
            #[cfg(feature = "aws")]
            Backend::Ssm(b) => Some(b.fetch(requests, deadline).await),
            Backend::Env(_) | Backend::Dotenv(_) | Backend::File(_) => None,
        }
    }

    /// Variables holding the credentials this backend used: the child does not inherit them
    /// unless the manifest asks for them. None of the local backends use credentials.
    pub fn consumed_env(&self) -> Vec<String> {
        match self {
            #[cfg(feature = "vault")]
            Backend::Vault(b) => b.consumed_env(),
            #[allow(unreachable_patterns)]
            _ => Vec::new(),
        }
    }

    /// Keeps credentials valid while a supervised child runs (renews Vault login tokens).
    /// Returns at once for backends with nothing to keep.
    pub async fn keep_alive(&self) {
        #[cfg(feature = "vault")]
        if let Backend::Vault(b) = self {
            b.keep_alive().await;
        }
    }
}
