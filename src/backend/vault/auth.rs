//! How the Vault backend gets its token: a token it is given (file, `$VAULT_TOKEN`/`$BAO_TOKEN`,
//! `~/.vault-token`) or one it logs in for (AppRole, JWT, Kubernetes). A token from a login is
//! renewed at about two thirds of its TTL while a supervised child runs, and obtained again when
//! it cannot be renewed any more.
//!
//! ```toml
//! auth = { method = "token", token_file = "/run/secrets/vault-token" }
//! auth = { method = "approle", role_id = "…", secret_id_file = "/run/secrets/approle-secret-id" }
//! auth = { method = "jwt", role = "ci", jwt_file = "/var/run/secrets/tokens/vault" }
//! auth = { method = "kubernetes", role = "payments" }   # the pod's service-account token
//! ```
//!
//! Tokens, secret ids and JWTs are `SecretString` from the moment they are read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::http::{Http, Reply};
use crate::secret::SecretError;

pub const KUBERNETES_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// A token this close to its expiry is not used for a new request: it is renewed or replaced.
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
pub enum AuthConfig {
    Token {
        token_file: Option<PathBuf>,
    },
    Approle {
        #[serde(default = "approle_mount")]
        mount: String,
        role_id: Option<String>,
        role_id_file: Option<PathBuf>,
        secret_id_file: Option<PathBuf>,
        secret_id_env: Option<String>,
    },
    Jwt {
        #[serde(default = "jwt_mount")]
        mount: String,
        role: String,
        jwt_file: Option<PathBuf>,
        jwt_env: Option<String>,
    },
    Kubernetes {
        #[serde(default = "kubernetes_mount")]
        mount: String,
        role: String,
        #[serde(default = "kubernetes_token")]
        jwt_file: PathBuf,
    },
}

fn approle_mount() -> String {
    "approle".into()
}
fn jwt_mount() -> String {
    "jwt".into()
}
fn kubernetes_mount() -> String {
    "kubernetes".into()
}
fn kubernetes_token() -> PathBuf {
    KUBERNETES_TOKEN.into()
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig::Token { token_file: None }
    }
}

impl AuthConfig {
    pub fn validate(&self) -> Result<(), crate::error::Invalid> {
        match self {
            AuthConfig::Approle {
                role_id,
                role_id_file,
                secret_id_file,
                secret_id_env,
                ..
            } => {
                if role_id.is_some() == role_id_file.is_some() {
                    return Err(
                        "auth method approle needs one of `role_id` or `role_id_file`".into(),
                    );
                }
                if secret_id_file.is_some() && secret_id_env.is_some() {
                    return Err(
                        "auth method approle takes `secret_id_file` or `secret_id_env`, not both"
                            .into(),
                    );
                }
                Ok(())
            }
            AuthConfig::Jwt {
                jwt_file, jwt_env, ..
            } if jwt_file.is_some() == jwt_env.is_some() => {
                Err("auth method jwt needs one of `jwt_file` or `jwt_env`".into())
            }
            _ => Ok(()),
        }
    }

    /// Variables holding credentials that this method reads: the child does not inherit them.
    pub fn consumed_env(&self) -> Vec<String> {
        match self {
            AuthConfig::Approle {
                secret_id_env: Some(v),
                ..
            }
            | AuthConfig::Jwt {
                jwt_env: Some(v), ..
            } => vec![v.clone()],
            _ => Vec::new(),
        }
    }

    fn method(&self) -> &'static str {
        match self {
            AuthConfig::Token { .. } => "token",
            AuthConfig::Approle { .. } => "approle",
            AuthConfig::Jwt { .. } => "jwt",
            AuthConfig::Kubernetes { .. } => "kubernetes",
        }
    }
}

/// A token in use, and what is known of its lifetime (nothing, for a token given from outside).
#[derive(Debug, Clone)]
struct Session {
    token: SecretString,
    lease: Option<Lease>,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    obtained: Instant,
    ttl: Duration,
    renewable: bool,
}

impl Lease {
    fn expires(&self) -> Instant {
        self.obtained + self.ttl
    }
}

#[derive(Debug)]
pub struct Auth {
    config: AuthConfig,
    base_dir: PathBuf,
    session: Mutex<Option<Session>>,
    /// Which login the current token came from, and when it ends: Vault revokes every lease a
    /// token created when the token ends, so issued credentials must not outlive it.
    login: std::sync::Mutex<Option<(u64, std::time::SystemTime)>>,
}

impl Auth {
    pub fn new(config: AuthConfig, base_dir: &Path) -> Auth {
        Auth {
            config,
            base_dir: base_dir.to_owned(),
            session: Mutex::new(None),
            login: std::sync::Mutex::new(None),
        }
    }

    /// The current login's number and its token's end, when secret-run logged in for a token
    /// with a TTL (a given token's end is not known, and a root-like one has none).
    pub fn token_end(&self) -> Option<(u64, std::time::SystemTime)> {
        *self
            .login
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a new token (`fresh`: from a login, not a renewal) and when it ends.
    fn note(&self, session: &Session, fresh: bool) {
        let mut login = self
            .login
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let number = login.map_or(0, |(n, _)| n) + u64::from(fresh);
        *login = session.lease.filter(|l| !l.ttl.is_zero()).map(|l| {
            (
                number,
                std::time::SystemTime::now()
                    + l.expires().saturating_duration_since(Instant::now()),
            )
        });
    }

    pub fn consumed_env(&self) -> Vec<String> {
        self.config.consumed_env()
    }

    pub fn logs_in(&self) -> bool {
        !matches!(self.config, AuthConfig::Token { .. })
    }

    /// The token to send: the current one while it is valid, else a new one.
    pub async fn token(&self, http: &Http, deadline: Instant) -> Result<SecretString, SecretError> {
        let mut session = self.session.lock().await;
        if let Some(s) = session.as_ref() {
            let fresh = s
                .lease
                .is_none_or(|l| l.ttl.is_zero() || l.expires() > Instant::now() + EXPIRY_MARGIN);
            if fresh {
                return Ok(s.token.clone());
            }
        }
        let new = match &self.config {
            AuthConfig::Token { token_file } => Session {
                token: self.given_token(token_file.as_deref())?,
                lease: None,
            },
            _ => self.login(http, deadline).await?,
        };
        let token = new.token.clone();
        self.note(&new, true);
        *session = Some(new);
        Ok(token)
    }

    fn given_token(&self, token_file: Option<&Path>) -> Result<SecretString, SecretError> {
        if let Some(file) = token_file {
            return self.read_credential(file, "the Vault token");
        }
        for var in ["VAULT_TOKEN", "BAO_TOKEN"] {
            if let Some(token) = env_credential(var, "the Vault token") {
                tracing::debug!(source = var, "using the Vault token from the environment");
                return token;
            }
        }
        if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            let file = PathBuf::from(home).join(".vault-token");
            if file.exists() {
                tracing::debug!(file = %file.display(), "using the Vault token helper file");
                return self.read_credential(&file, "the Vault token");
            }
        }
        Err(SecretError::denied(
            "no Vault token: set VAULT_TOKEN (or BAO_TOKEN), set `auth = { method = \"token\", token_file = \"…\" }`, \
             log in with `vault login` / `bao login` (which writes ~/.vault-token), or configure a login method (approle, jwt, kubernetes)",
        ))
    }

    /// Reads a credential file: trimmed, never empty, never shown.
    fn read_credential(&self, file: &Path, what: &str) -> Result<SecretString, SecretError> {
        let path = self.base_dir.join(file);
        let bytes = Zeroizing::new(std::fs::read(&path).map_err(|e| {
            SecretError::denied(format!("cannot read {what} from {}: {e}", path.display()))
        })?);
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            SecretError::denied(format!("{what} in {} is not valid UTF-8", path.display()))
        })?;
        let text = text.trim();
        if text.is_empty() {
            return Err(SecretError::denied(format!(
                "{what} file {} is empty",
                path.display()
            )));
        }
        Ok(SecretString::from(text))
    }

    fn credential_from_env(&self, var: &str, what: &str) -> Result<SecretString, SecretError> {
        env_credential(var, what).unwrap_or_else(|| {
            Err(SecretError::denied(format!(
                "${var} ({what}) is not set or empty"
            )))
        })
    }

    /// The login request's mount and JSON body (which holds credentials, hence zeroized).
    fn login_request(&self) -> Result<(String, Zeroizing<String>), SecretError> {
        let mut body = serde_json::Map::new();
        let mount = match &self.config {
            AuthConfig::Token { .. } => {
                return Err(SecretError::denied("the token method does not log in"));
            }
            AuthConfig::Approle {
                mount,
                role_id,
                role_id_file,
                secret_id_file,
                secret_id_env,
            } => {
                let role_id = match (role_id, role_id_file) {
                    (Some(id), _) => id.clone(),
                    (None, Some(file)) => self
                        .read_credential(file, "the AppRole role id")?
                        .expose_secret()
                        .to_owned(),
                    (None, None) => return Err(SecretError::denied("approle needs a role id")),
                };
                body.insert("role_id".into(), role_id.into());
                let secret_id = match (secret_id_file, secret_id_env) {
                    (Some(file), _) => Some(self.read_credential(file, "the AppRole secret id")?),
                    (None, Some(var)) => {
                        Some(self.credential_from_env(var, "the AppRole secret id")?)
                    }
                    (None, None) => None,
                };
                if let Some(s) = secret_id {
                    body.insert("secret_id".into(), s.expose_secret().into());
                }
                mount
            }
            AuthConfig::Jwt {
                mount,
                role,
                jwt_file,
                jwt_env,
            } => {
                let jwt = match (jwt_file, jwt_env) {
                    (Some(file), _) => self.read_credential(file, "the JWT")?,
                    (None, Some(var)) => self.credential_from_env(var, "the JWT")?,
                    (None, None) => return Err(SecretError::denied("jwt needs a JWT")),
                };
                body.insert("role".into(), role.clone().into());
                body.insert("jwt".into(), jwt.expose_secret().into());
                mount
            }
            AuthConfig::Kubernetes {
                mount,
                role,
                jwt_file,
            } => {
                let jwt = self.read_credential(jwt_file, "the Kubernetes service-account token")?;
                body.insert("role".into(), role.clone().into());
                body.insert("jwt".into(), jwt.expose_secret().into());
                mount
            }
        };
        let text = Zeroizing::new(serde_json::Value::Object(body).to_string());
        Ok((mount.trim_matches('/').to_owned(), text))
    }

    async fn login(&self, http: &Http, deadline: Instant) -> Result<Session, SecretError> {
        let (mount, body) = self.login_request()?;
        let method = self.config.method();
        let url = http.url(&["auth", &mount, "login"], None);
        let reply = http
            .call(Method::POST, url, None, Some(&body), deadline)
            .await
            .map_err(|e| SecretError::new(e.kind, format!("{method} login: {}", e.message)))?;
        drop(body);
        let where_ = format!("{method} login at auth/{mount}/login");
        let session = session_from(&reply, &where_)?;
        if let Some(l) = &session.lease {
            tracing::debug!(
                method,
                ttl_s = l.ttl.as_secs(),
                renewable = l.renewable,
                "logged in"
            );
        }
        Ok(session)
    }

    /// Renews the login token while the child runs, or logs in again when it cannot be renewed
    /// (not renewable, past its max TTL, revoked). Never returns while it has a token to keep.
    pub async fn keep_alive(&self, http: &Http) {
        if !self.logs_in() {
            return;
        }
        let mut failures: u32 = 0;
        loop {
            let lease = self.session.lock().await.as_ref().and_then(|s| s.lease);
            let wake = match lease {
                // A token without a TTL (root-like) never needs renewing.
                Some(l) if l.ttl.is_zero() => return,
                Some(l) if failures == 0 => l.obtained + l.ttl.mul_f64(2.0 / 3.0),
                // After a failure: try again soon, but not in a tight loop.
                _ => Instant::now() + Duration::from_secs(2u64.saturating_pow(failures.min(5))),
            };
            tokio::time::sleep_until(wake).await;
            let deadline = Instant::now() + Duration::from_secs(30);
            match self.refresh(http, lease, deadline).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "could not renew or replace the Vault token; trying again");
                }
            }
        }
    }

    async fn refresh(
        &self,
        http: &Http,
        lease: Option<Lease>,
        deadline: Instant,
    ) -> Result<(), SecretError> {
        let mut session = self.session.lock().await;
        if let (Some(s), Some(l)) = (session.as_ref(), lease) {
            if l.renewable {
                let url = http.url(&["auth", "token", "renew-self"], None);
                let body = Zeroizing::new("{}".to_owned());
                let renewed = http
                    .call(Method::POST, url, Some(&s.token), Some(&body), deadline)
                    .await
                    .and_then(|reply| session_from(&reply, "token renewal"));
                match renewed {
                    // A TTL cut short by the token's max TTL means the end is near: log in again.
                    Ok(new) if new.lease.is_some_and(|n| n.ttl * 2 >= l.ttl) => {
                        tracing::debug!(
                            ttl_s = new.lease.map_or(0, |n| n.ttl.as_secs()),
                            "Vault token renewed"
                        );
                        let renewed = Session {
                            token: s.token.clone(),
                            lease: new.lease,
                        };
                        self.note(&renewed, false);
                        *session = Some(renewed);
                        return Ok(());
                    }
                    Ok(_) => {
                        tracing::debug!("the Vault token is near its max TTL; logging in again")
                    }
                    Err(e) => tracing::debug!(error = %e, "renewal failed; logging in again"),
                }
            }
        }
        let new = self.login(http, deadline).await?;
        self.note(&new, true);
        *session = Some(new);
        tracing::debug!("logged in again for a new Vault token");
        Ok(())
    }
}

/// A credential from the environment, trimmed; `None` when the variable is unset or empty.
fn env_credential(var: &str, what: &str) -> Option<Result<SecretString, SecretError>> {
    let v = std::env::var_os(var).filter(|v| !v.is_empty())?;
    Some(
        v.into_string()
            .map(|v| SecretString::from(Zeroizing::new(v).trim()))
            .map_err(|_| SecretError::denied(format!("${var} ({what}) is not valid UTF-8"))),
    )
}

/// The token and lease of a login or renewal reply, or the error that explains a refusal.
fn session_from(reply: &Reply, what: &str) -> Result<Session, SecretError> {
    #[derive(Deserialize)]
    struct Body {
        auth: Option<AuthBody>,
    }
    #[derive(Deserialize)]
    struct AuthBody {
        client_token: String,
        #[serde(default)]
        lease_duration: u64,
        #[serde(default)]
        renewable: bool,
    }
    let status = reply.status;
    if status.is_success() {
        let parsed: Body = serde_json::from_slice(&reply.body).map_err(|e| {
            SecretError::unavailable(format!(
                "{what}: the reply is not what Vault sends ({})",
                crate::error::json_message(&e)
            ))
        })?;
        let auth = parsed
            .auth
            .ok_or_else(|| SecretError::unavailable(format!("{what}: the reply has no token")))?;
        let token = Zeroizing::new(auth.client_token);
        return Ok(Session {
            token: SecretString::from(token.as_str()),
            lease: Some(Lease {
                obtained: Instant::now(),
                // A server's TTL is bounded like any configured duration: it is added to clock
                // readings, and a huge one would overflow them.
                ttl: Duration::from_secs(auth.lease_duration).min(crate::duration::MAX),
                renewable: auth.renewable,
            }),
        });
    }
    let said = reply.said();
    Err(match status.as_u16() {
        400 | 401 | 403 => SecretError::denied(format!(
            "{what} was refused ({said}); check the role and the credential it was given"
        )),
        404 => SecretError::denied(format!(
            "{what}: no such auth method is enabled ({said}); check `mount` in `auth`"
        )),
        _ => SecretError::unavailable(format!("{what} failed ({said})")),
    })
}
