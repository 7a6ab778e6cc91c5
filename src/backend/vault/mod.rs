//! The `vault` backend: KV secrets and issued credentials (database users, certificates) from
//! HashiCorp Vault or OpenBao (the same HTTP API).
//!
//! ```toml
//! [backends.vault]
//! kind = "vault"
//! address = "https://vault.example.com:8200"   # else $VAULT_ADDR, else $BAO_ADDR
//! mount = "secret"                             # the KV mount (default "secret")
//! kv_version = 2          # 1 or 2; when omitted, read from the mount (as the vault CLI does)
//! namespace = "trading"   # else $VAULT_NAMESPACE / $BAO_NAMESPACE; sent as X-Vault-Namespace
//! prefix = "payments/{env}/"
//! ca_cert = "/etc/ssl/vault-ca.pem"   # else $VAULT_CACERT / $VAULT_CAPATH; replaces the system roots
//! auth = { method = "approle", role_id = "…", secret_id_file = "/run/secrets/approle-secret-id" }
//! request_timeout = "10s" # per request, retries included in the resolve deadline
//! max_retries = 4         # on connection errors and 5xx, with jittered exponential back-off (429: until the deadline)
//! max_parallel = 16       # requests in flight at once
//! revoke = true           # revoke issued leases when no child uses them (false: let them expire)
//! ```
//!
//! A path inside a mount that is not KV (`database/creds/app`, `pki/issue/web`) is that engine's
//! API path: read with GET, or POST with the entry's `params`; its lease (or its certificate's
//! validity) is renewed, replaced and revoked by the supervisor (`issued.rs`).
//!
//! A secret is an object of fields. `key` picks a field, or follows a JSON pointer (`/db/password`)
//! into it, also into a field that holds JSON text. Without `key` the secret must have one field
//! or a field named `value`. `version = N` pins a KV v2 version. TLS verification is always on,
//! unless `VAULT_SKIP_VERIFY` is set to true, which is warned about on every run.

pub mod auth;
mod changes;
pub mod http;
mod issued;
mod mounts;
mod slots;
mod write;

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Method, Url};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use self::auth::{Auth, AuthConfig};
use self::http::{Http, Reply, Settings};
use self::mounts::{Mounts, Place};
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{
    Backend, Context, FetchResult, Fetched, Kind, LeaseId, Reader, RemoteRead, Request, typed,
};
use crate::error::Invalid;
use crate::secret::SecretError;

pub const KIND: Kind = Kind {
    name: "vault",
    builtin: None,
    parse: |table| {
        let config = typed::<Config>(table)?;
        config.validate()?;
        Ok(Box::new(config))
    },
};

const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_RETRIES: u32 = 4;
const DEFAULT_PARALLEL: usize = 16;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub address: Option<String>,
    #[serde(default = "default_mount")]
    pub mount: String,
    pub kv_version: Option<u8>,
    pub namespace: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub ca_path: Option<PathBuf>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default, deserialize_with = "crate::duration::de_opt")]
    pub request_timeout: Option<Duration>,
    pub max_retries: Option<u32>,
    pub max_parallel: Option<usize>,
    pub revoke: Option<bool>,
}

fn default_mount() -> String {
    "secret".into()
}

impl super::Config for Config {
    fn check_version(&self, version: &str) -> Option<Result<(), Invalid>> {
        Some(self.check_version(version))
    }

    fn build(&self, ctx: &Context) -> Result<Arc<dyn Backend>, Invalid> {
        Ok(Arc::new(VaultBackend::new(self, ctx)?))
    }

    fn takes_params(&self) -> bool {
        true
    }
}

impl Config {
    fn validate(&self) -> Result<(), Invalid> {
        if let Some(v) = self.kv_version {
            if v != 1 && v != 2 {
                return Err(Invalid(format!(
                    "`kv_version = {v}`: KV versions are 1 and 2"
                )));
            }
        }
        if self.mount.trim_matches('/').is_empty() {
            return Err("`mount` cannot be empty: name the KV mount, e.g. \"secret\"".into());
        }
        if self.max_parallel == Some(0) {
            return Err("`max_parallel` must be at least 1".into());
        }
        self.auth.validate()
    }

    fn check_version(&self, version: &str) -> Result<(), Invalid> {
        if self.kv_version == Some(1) {
            return Err("KV version 1 keeps no versions; remove `version`".into());
        }
        match version.parse::<u64>() {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(Invalid(format!(
                "`version = \"{version}\"`: a KV v2 version is a positive number"
            ))),
        }
    }
}

/// Reads an environment variable that configures the client, when set and not empty.
fn env_setting(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
}

#[derive(Debug)]
pub struct VaultBackend {
    http: Http,
    mount: String,
    kv_version: Option<u8>,
    /// The engines the token sees, listed once (only an answer is kept).
    mounts: OnceCell<Mounts>,
    auth: Auth,
    max_parallel: usize,
    /// Issuing endpoints are read (not for `check` without `--issue`).
    issue: bool,
    revoke: bool,
    /// What was read before, to read again only what changed.
    seen: changes::Seen,
}

impl Backend for VaultBackend {
    fn reader(&self) -> Reader<'_> {
        Reader::Remote(self)
    }

    /// The Vault credentials in the environment, and those the auth method read from it.
    fn consumed_env(&self) -> Vec<String> {
        let mut vars: Vec<String> = CREDENTIAL_VARS.iter().map(|v| (*v).to_owned()).collect();
        vars.extend(self.auth.consumed_env());
        vars
    }

    /// Keeps a login token valid while a supervised child runs.
    fn keep_alive(&self) -> Option<BoxFuture<'_, ()>> {
        Some(Box::pin(self.auth.keep_alive(&self.http)))
    }

    fn renew<'a>(
        &'a self,
        lease: &'a LeaseId,
        increment: Duration,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Duration, SecretError>> {
        Box::pin(self.renew_lease(lease, increment, deadline))
    }

    fn revoke<'a>(
        &'a self,
        lease: &'a LeaseId,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), SecretError>> {
        Box::pin(self.revoke_lease(lease, deadline))
    }

    fn revokes(&self) -> bool {
        self.revoke
    }

    fn token_end(&self) -> Option<(u64, std::time::SystemTime)> {
        self.auth.token_end()
    }

    fn writer(&self) -> Option<&dyn super::WriteValue> {
        Some(self)
    }

    fn refresh(&self) {
        self.seen.forget();
    }

    fn slots(&self) -> Option<&dyn super::Slots> {
        Some(self)
    }

    fn rotation(&self) -> Option<&dyn super::Rotate> {
        Some(self)
    }
}

impl RemoteRead for VaultBackend {
    fn fetch<'a>(
        &'a self,
        requests: &'a [Request],
        deadline: Instant,
    ) -> BoxFuture<'a, FetchResult> {
        Box::pin(self.fetch_all(requests, deadline))
    }
}

impl VaultBackend {
    fn new(config: &Config, ctx: &Context) -> Result<Self, Invalid> {
        let address = config
            .address
            .clone()
            .or_else(|| env_setting(&["VAULT_ADDR", "BAO_ADDR"]))
            .ok_or(
                "needs an address: set `address`, or VAULT_ADDR (or BAO_ADDR) in the environment",
            )?;
        let mut url = Url::parse(address.trim()).map_err(|e| {
            format!(
                "address `{address}` is not a URL ({e}); write e.g. https://vault.example.com:8200"
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(Invalid(format!(
                "address `{address}` must be an http:// or https:// URL with a host"
            )));
        }
        url.set_query(None);
        let namespace = config
            .namespace
            .clone()
            .or_else(|| env_setting(&["VAULT_NAMESPACE", "BAO_NAMESPACE"]))
            .map(|n| n.trim_matches('/').to_owned())
            .filter(|n| !n.is_empty());
        let skip_verify = match env_setting(&["VAULT_SKIP_VERIFY", "BAO_SKIP_VERIFY"]) {
            None => false,
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "t" => true,
                "0" | "false" | "no" | "f" => false,
                other => {
                    return Err(Invalid(format!(
                        "VAULT_SKIP_VERIFY is `{other}`; set it to true or false"
                    )));
                }
            },
        };
        if skip_verify && url.scheme() == "https" {
            tracing::warn!(
                address = %url,
                "VAULT_SKIP_VERIFY is set: the Vault server's TLS certificate is NOT verified; anyone on the path can read the secrets"
            );
        }
        let ca_certs = load_cas(config, ctx)?;
        let request_timeout = config.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        let max_parallel = config.max_parallel.unwrap_or(DEFAULT_PARALLEL);
        let http = Http::new(Settings {
            address: url,
            namespace,
            ca_certs,
            skip_verify,
            request_timeout,
            max_retries: config.max_retries.unwrap_or(DEFAULT_RETRIES),
            max_connections: max_parallel,
        })?;
        Ok(VaultBackend {
            http,
            mount: config.mount.trim_matches('/').to_owned(),
            kv_version: config.kv_version,
            mounts: OnceCell::new(),
            auth: Auth::new(config.auth.clone(), &ctx.base_dir),
            max_parallel,
            issue: ctx.issue,
            revoke: config.revoke.unwrap_or(true),
            seen: changes::Seen::default(),
        })
    }

    async fn fetch_all(&self, requests: &[Request], deadline: Instant) -> FetchResult {
        let token = self.auth.token(&self.http, deadline).await?;
        let mounts = self.mounts(&token, deadline).await?;
        let kv = requests.iter().any(|r| mounts.place(&r.path) == Place::Kv);
        // Asked only when a KV secret is read: a manifest of issued credentials only needs no
        // KV mount at all.
        let version = match (self.kv_version, kv) {
            (Some(v), _) => Ok(v),
            (None, true) => mounts.kv_version(&self.mount),
            (None, false) => Ok(2),
        };
        let reads: Vec<_> = requests
            .iter()
            .map(|r| {
                let (version, token) = (version.clone(), &token);
                async move {
                    match mounts.place(&r.path) {
                        Place::Api { engine } => self.read_api(r, engine, token, deadline).await,
                        Place::Kv => {
                            let version = version?;
                            if version == 2 {
                                if let Some(f) = self.unchanged(r, token, deadline).await {
                                    return Ok(f);
                                }
                            }
                            let read = self.read(r, version, token, deadline).await;
                            if let (2, Ok(f)) = (version, &read) {
                                self.seen.remember(r, f);
                            }
                            read
                        }
                    }
                }
            })
            .collect();
        let results: Vec<Result<Fetched, SecretError>> = futures_util::stream::iter(reads)
            .buffered(self.max_parallel)
            .collect()
            .await;
        // A refusal may be the token's fault rather than the policy's: one lookup tells which.
        if results.iter().any(|r| {
            r.as_ref()
                .is_err_and(|e| e.kind == crate::secret::ErrorKind::PermissionDenied)
        }) {
            self.check_token(&token, deadline).await?;
        }
        crate::backend::in_order(results.into_iter().enumerate().collect(), requests.len())
    }

    /// `Err` when the token itself is refused (expired, revoked, from another server): every
    /// variable then fails for that one reason, which is what the user must fix.
    async fn check_token(
        &self,
        token: &SecretString,
        deadline: Instant,
    ) -> Result<(), SecretError> {
        let url = self.http.url(&["auth", "token", "lookup-self"], None);
        match self
            .http
            .call(Method::GET, url, Some(token), None, deadline)
            .await
        {
            Ok(reply) if reply.status.as_u16() == 403 => Err(SecretError::denied(format!(
                "the Vault token was refused ({}): it is expired, revoked, not from this server, or lacks the `default` policy (which allows auth/token/lookup-self){}",
                reply.said(),
                if self.auth.logs_in() {
                    ""
                } else {
                    "; get a new one (`vault login` / `bao login`) or check VAULT_TOKEN"
                }
            ))),
            _ => Ok(()),
        }
    }

    /// The secrets engines the token sees (as `vault kv get` asks, but for every mount at once).
    async fn mounts(
        &self,
        token: &SecretString,
        deadline: Instant,
    ) -> Result<&Mounts, SecretError> {
        // Only an answer is kept: after a failure the next resolve asks again.
        self.mounts
            .get_or_try_init(|| async {
                let url = self.http.url(&["sys", "internal", "ui", "mounts"], None);
                let reply = self
                    .http
                    .call(Method::GET, url, Some(token), None, deadline)
                    .await?;
                match reply.status.as_u16() {
                    200 => Mounts::parse(&reply),
                    // Refused by a policy that denies it explicitly: every path is KV.
                    403 => {
                        tracing::debug!(
                            "the token may not list the secrets engines; every path is read as KV"
                        );
                        Ok(Mounts::unknown())
                    }
                    _ => Err(unavailable(
                        &reply,
                        "listing the secrets engines",
                        self.http.address(),
                    )),
                }
            })
            .await
    }

    async fn read(
        &self,
        request: &Request,
        version: u8,
        token: &SecretString,
        deadline: Instant,
    ) -> Result<Fetched, SecretError> {
        let path = request.path.trim_matches('/');
        if request.params.is_some() {
            return Err(SecretError::invalid(format!(
                "`params` go to an issuing endpoint, but `{path}` is a KV secret (no secrets engine is mounted where it begins); remove `params`, or check the path"
            )));
        }
        let api_path = if version == 2 {
            format!("{}/data/{path}", self.mount)
        } else {
            format!("{}/{path}", self.mount)
        };
        let query = request.version.as_deref().map(|v| ("version", v));
        if version == 1 && request.version.is_some() {
            return Err(SecretError::invalid(format!(
                "mount `{}/` is KV version 1, which keeps no versions; remove `version`",
                self.mount
            )));
        }
        let url = self.http.url(&[&api_path], query);
        let reply = self
            .http
            .call(Method::GET, url, Some(token), None, deadline)
            .await?;
        match reply.status.as_u16() {
            200 => self.parse_secret(&reply, version, path, &api_path),
            403 => Err(SecretError::denied(format!(
                "permission denied reading `{api_path}` ({}); the token's policy needs `read` on path \"{api_path}\"",
                reply.said()
            ))),
            404 => Err(self
                .not_found(&reply, version, path, &api_path, token, deadline)
                .await),
            _ => Err(unavailable(
                &reply,
                &format!("reading `{api_path}`"),
                self.http.address(),
            )),
        }
    }

    fn parse_secret(
        &self,
        reply: &Reply,
        version: u8,
        path: &str,
        api_path: &str,
    ) -> Result<Fetched, SecretError> {
        #[derive(Deserialize)]
        struct Body<'a> {
            #[serde(borrow)]
            data: Option<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct V2<'a> {
            #[serde(borrow)]
            data: Option<&'a RawValue>,
            metadata: Option<Metadata>,
        }
        let malformed = |e: serde_json::Error| {
            SecretError::unavailable(format!(
                "unexpected reply reading `{api_path}` ({}); if the mount is KV version 1, set `kv_version = 1`",
                crate::error::json_message(&e)
            ))
        };
        // Borrowed straight from the (zeroized) body: the fields' JSON is copied once, into
        // the SecretString, and nowhere else.
        let body: Body = serde_json::from_slice(&reply.body).map_err(malformed)?;
        let data = body.data.filter(|d| d.get() != "null");
        let Some(data) = data else {
            return Err(SecretError::not_found(format!(
                "`{api_path}` holds no data"
            )));
        };
        if version == 1 {
            return Ok(Fetched::fields(SecretString::from(data.get()), None, None));
        }
        let v2: V2 = serde_json::from_str(data.get()).map_err(malformed)?;
        let meta = v2.metadata.unwrap_or_default();
        match v2.data.filter(|d| d.get() != "null") {
            Some(fields) => Ok(Fetched::fields(
                SecretString::from(fields.get()),
                meta.version.map(|v| v.to_string()),
                meta.created_time
                    .as_deref()
                    .and_then(super::whole_seconds)
                    .map(|t| format!("created {t}")),
            )),
            None => Err(meta.gone(&self.mount, path)),
        }
    }

    /// A 404 explained: a deleted version, or a mount read with the wrong KV version.
    async fn not_found(
        &self,
        reply: &Reply,
        version: u8,
        path: &str,
        api_path: &str,
        token: &SecretString,
        deadline: Instant,
    ) -> SecretError {
        let mut msg = format!(
            "no secret at `{path}` in KV v{version} mount `{}/` (read `{api_path}`)",
            self.mount
        );
        // KV v2 answers a deleted or destroyed version with 404 and its metadata.
        #[derive(Deserialize)]
        struct Body {
            data: Option<V2Meta>,
        }
        #[derive(Deserialize)]
        struct V2Meta {
            metadata: Option<Metadata>,
        }
        if let Ok(Body {
            data: Some(V2Meta { metadata: Some(m) }),
        }) = serde_json::from_slice::<Body>(&reply.body)
        {
            if m.version.is_some()
                && (m.destroyed || !m.deletion_time.as_deref().unwrap_or("").is_empty())
            {
                return m.gone(&self.mount, path);
            }
        }
        if reply.warnings().iter().any(|w| w.contains("versioned K/V")) {
            msg.push_str(&format!(
                "; mount `{}/` is KV version 2: set `kv_version = 2` or remove `kv_version`",
                self.mount
            ));
        } else if self.kv_version.is_some() {
            // Configured, not detected: see whether the mount disagrees (listed once per run).
            let actual = self
                .mounts(token, deadline)
                .await
                .ok()
                .and_then(|m| m.kv_version(&self.mount).ok());
            if let Some(actual) = actual {
                if actual != version {
                    msg.push_str(&format!(
                        "; mount `{}/` is KV version {actual}: set `kv_version = {actual}` or remove `kv_version`",
                        self.mount
                    ));
                }
            }
        }
        SecretError::not_found(msg)
    }
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    version: Option<u64>,
    created_time: Option<String>,
    deletion_time: Option<String>,
    #[serde(default)]
    destroyed: bool,
}

impl Metadata {
    /// The error for a version that is deleted or destroyed.
    fn gone(&self, mount: &str, path: &str) -> SecretError {
        let what = if self.destroyed {
            "was destroyed".to_owned()
        } else {
            format!(
                "was deleted at {}; undelete it or pin another `version`",
                self.deletion_time.as_deref().unwrap_or("?")
            )
        };
        SecretError::not_found(format!(
            "`{mount}/{path}` version {} {what}",
            self.version.unwrap_or(0)
        ))
    }
}

/// A reply that means the server cannot serve now: sealed, standby, overloaded, failing.
fn unavailable(reply: &Reply, doing: &str, address: &str) -> SecretError {
    let said = reply.said();
    let hint = match reply.status.as_u16() {
        503 if said.contains("sealed") => "; the server is sealed: unseal it",
        503 => "; the server is sealed, in standby without forwarding, or overloaded",
        429 => "; the server is rate-limiting; raise `--timeout` or lower `max_parallel`",
        _ => "",
    };
    SecretError::unavailable(format!("{address} failed {doing} ({said}){hint}"))
}

/// The CA certificates to trust instead of the system's: `ca_cert` / `ca_path`, else
/// `$VAULT_CACERT` / `$VAULT_CAPATH` (and the BAO_ forms).
fn load_cas(config: &Config, ctx: &Context) -> Result<Vec<reqwest::Certificate>, Invalid> {
    let file = config
        .ca_cert
        .as_ref()
        .map(|p| ctx.base_dir.join(p))
        .or_else(|| env_setting(&["VAULT_CACERT", "BAO_CACERT"]).map(PathBuf::from));
    let dir = config
        .ca_path
        .as_ref()
        .map(|p| ctx.base_dir.join(p))
        .or_else(|| env_setting(&["VAULT_CAPATH", "BAO_CAPATH"]).map(PathBuf::from));
    let mut files = Vec::new();
    if let Some(f) = file {
        files.push(f);
    }
    if let Some(d) = dir {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| format!("cannot read the CA directory {}: {e}", d.display()))?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        files.extend(found);
    }
    let mut certs = Vec::new();
    for f in files {
        let pem = std::fs::read(&f)
            .map_err(|e| format!("cannot read the CA certificate {}: {e}", f.display()))?;
        let mut parsed = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            format!(
                "{} holds no usable PEM certificate ({})",
                f.display(),
                http::chain(&e)
            )
        })?;
        if parsed.is_empty() {
            return Err(Invalid(format!("{} holds no PEM certificate", f.display())));
        }
        certs.append(&mut parsed);
    }
    Ok(certs)
}

/// Every variable naming a Vault credential: the child does not inherit them.
pub const CREDENTIAL_VARS: &[&str] = &["VAULT_TOKEN", "BAO_TOKEN"];
