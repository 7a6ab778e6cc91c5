//! Writing a KV secret (`put`, `migrate`): read, set the field (or the value), write a new
//! version. On KV v2 the write is check-and-set on the version read (or the one the operator
//! names), so that a concurrent writer is a conflict, never a lost update.

use futures_util::future::BoxFuture;
use reqwest::Method;
use secrecy::SecretString;
use secrecy::zeroize::Zeroizing;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::VaultBackend;
use super::mounts::Place;
use crate::backend::{Put, WriteValue, Written, check_create_only};
use crate::secret::{ErrorKind, SecretError};

impl WriteValue for VaultBackend {
    fn put<'a>(
        &'a self,
        put: &'a Put,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Written, SecretError>> {
        Box::pin(self.write(put, deadline))
    }
}

/// The current fields of a secret and the version they are (0: none yet).
pub(super) struct Current {
    pub(super) fields: Option<Zeroizing<String>>,
    pub(super) version: u64,
}

impl VaultBackend {
    async fn write(&self, put: &Put, deadline: Instant) -> Result<Written, SecretError> {
        let token = self.auth.token(&self.http, deadline).await?;
        let mounts = self.mounts(&token, deadline).await?;
        let path = put.path.trim_matches('/');
        if let Place::Api { engine } = mounts.place(path) {
            return Err(SecretError::invalid(format!(
                "`{path}` is a path of the `{engine}` secrets engine, which issues values: it cannot be written"
            )));
        }
        let version = match self.kv_version {
            Some(v) => v,
            None => mounts.kv_version(&self.mount)?,
        };
        let write_path = if version == 2 {
            format!("{}/data/{path}", self.mount)
        } else {
            format!("{}/{path}", self.mount)
        };
        let current = self.current(&write_path, version, &token, deadline).await?;
        check_create_only(
            put,
            current.fields.is_some(),
            &format!("`{}/{path}`", self.mount),
        )?;
        let fields = new_fields(current.fields.as_deref().map(|s| s.as_str()), put)?;
        let body = if version == 2 {
            let cas = put.cas.unwrap_or(current.version);
            Zeroizing::new(format!(
                "{{\"options\":{{\"cas\":{cas}}},\"data\":{}}}",
                fields.as_str()
            ))
        } else {
            fields
        };
        let url = self.http.url(&[&write_path], None);
        let reply = self
            .http
            .call(Method::POST, url, Some(&token), Some(&body), deadline)
            .await?;
        match reply.status.as_u16() {
            200 | 204 => {
                #[derive(Deserialize)]
                struct Body {
                    data: Option<Data>,
                }
                #[derive(Deserialize)]
                struct Data {
                    version: Option<u64>,
                }
                let version = serde_json::from_slice::<Body>(&reply.body)
                    .ok()
                    .and_then(|b| b.data)
                    .and_then(|d| d.version)
                    .map(|v| v.to_string());
                Ok(Written { version })
            }
            400 if reply.errors().contains("check-and-set") => Err(SecretError::new(
                ErrorKind::Conflict,
                format!(
                    "`{write_path}` changed since version {} was read (check-and-set): another writer got there first; read it again and retry",
                    put.cas.unwrap_or(current.version)
                ),
            )),
            403 => Err(SecretError::denied(format!(
                "permission denied writing `{write_path}` ({}); the token's policy needs `create` and `update` on path \"{write_path}\"",
                reply.said()
            ))),
            _ => Err(super::unavailable(
                &reply,
                &format!("writing `{write_path}`"),
                self.http.address(),
            )),
        }
    }

    pub(super) async fn current(
        &self,
        api_path: &str,
        version: u8,
        token: &SecretString,
        deadline: Instant,
    ) -> Result<Current, SecretError> {
        #[derive(Deserialize)]
        struct Body<'a> {
            #[serde(borrow)]
            data: Option<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct V2<'a> {
            #[serde(borrow)]
            data: Option<&'a RawValue>,
            metadata: Option<Meta>,
        }
        #[derive(Deserialize)]
        struct Meta {
            version: Option<u64>,
        }
        let url = self.http.url(&[api_path], None);
        let reply = self
            .http
            .call(Method::GET, url, Some(token), None, deadline)
            .await?;
        let body: Option<Body> = serde_json::from_slice(&reply.body).ok();
        let data = body.and_then(|b| b.data).filter(|d| d.get() != "null");
        match (reply.status.as_u16(), version) {
            (200, 1) => Ok(Current {
                fields: data.map(|d| Zeroizing::new(d.get().to_owned())),
                version: 0,
            }),
            // KV v2 answers a deleted latest version with 404 and its metadata: its number is
            // what check-and-set must name.
            (200 | 404, 2) => {
                let v2 = data.and_then(|d| serde_json::from_str::<V2>(d.get()).ok());
                let version = v2
                    .as_ref()
                    .and_then(|v| v.metadata.as_ref())
                    .and_then(|m| m.version)
                    .unwrap_or(0);
                let fields = v2
                    .and_then(|v| v.data)
                    .filter(|d| d.get() != "null")
                    .map(|d| Zeroizing::new(d.get().to_owned()));
                Ok(Current { fields, version })
            }
            (404, _) => Ok(Current {
                fields: None,
                version: 0,
            }),
            (403, _) => Err(SecretError::denied(format!(
                "permission denied reading `{api_path}` before writing it ({}); the token's policy needs `read` there too",
                reply.said()
            ))),
            _ => Err(super::unavailable(
                &reply,
                &format!("reading `{api_path}`"),
                self.http.address(),
            )),
        }
    }
}

/// The secret's fields after the write: `key`'s field set, or without `key` its only field
/// (or `value`), or `{"value": …}` for a new secret.
fn new_fields(current: Option<&str>, put: &Put) -> Result<Zeroizing<String>, SecretError> {
    if let Some(key) = &put.key {
        return crate::secret::set_field(current, key, &put.value);
    }
    let field = match current {
        None => "value".to_owned(),
        Some(text) => {
            let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
                .map_err(|_| SecretError::invalid("the secret's fields are not a JSON object"))?;
            match fields.len() {
                0 | 1 => fields
                    .keys()
                    .next()
                    .cloned()
                    .unwrap_or_else(|| "value".into()),
                _ if fields.contains_key("value") => "value".to_owned(),
                _ => {
                    let names: Vec<&str> = fields.keys().map(String::as_str).collect();
                    return Err(SecretError::invalid(format!(
                        "the secret has several fields ({}) and none is named `value`: name the one to write with the entry's `key`",
                        names.join(", ")
                    )));
                }
            }
        }
    };
    // Only that field changes; the others are written back as they were.
    crate::secret::set_field(current, &crate::secret::Key::Field(field), &put.value)
}

/// KV v2 keeps versions: the pending version is simply the newest (reads get it at once);
/// rolling back writes the previous content again as a newer version.
impl crate::backend::Rotate for VaultBackend {
    fn pending<'a>(
        &'a self,
        put: &'a Put,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<crate::backend::Pending, SecretError>> {
        Box::pin(async move {
            let token = self.auth.token(&self.http, deadline).await?;
            let mounts = self.mounts(&token, deadline).await?;
            let version = match self.kv_version {
                Some(v) => v,
                None => mounts.kv_version(&self.mount)?,
            };
            if version != 2 {
                return Err(SecretError::invalid(format!(
                    "mount `{}/` is KV version 1, which keeps no versions to roll back to: rotate needs KV v2",
                    self.mount
                )));
            }
            let path = put.path.trim_matches('/');
            let api = format!("{}/data/{path}", self.mount);
            let current = self.current(&api, 2, &token, deadline).await?;
            let put = Put {
                path: put.path.clone(),
                key: put.key.clone(),
                value: put.value.clone(),
                cas: Some(current.version),
                create_only: false,
            };
            let written = self.write(&put, deadline).await?;
            Ok(crate::backend::Pending {
                path: put.path.clone(),
                new: written.version.unwrap_or_default(),
                previous: (current.version > 0).then(|| current.version.to_string()),
                visible: true,
                restore: current.fields.map(|f| SecretString::from(f.as_str())),
            })
        })
    }

    fn promote<'a>(
        &'a self,
        _pending: &'a crate::backend::Pending,
        _deadline: Instant,
    ) -> BoxFuture<'a, Result<(), SecretError>> {
        // The newest version is the current one already.
        Box::pin(async { Ok(()) })
    }

    fn roll_back<'a>(
        &'a self,
        pending: &'a crate::backend::Pending,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), SecretError>> {
        Box::pin(async move {
            let token = self.auth.token(&self.http, deadline).await?;
            let path = pending.path.trim_matches('/');
            let api = format!("{}/data/{path}", self.mount);
            let cas: u64 = pending.new.parse().unwrap_or(0);
            let (method, body) = match &pending.restore {
                Some(fields) => (
                    Method::POST,
                    Some(Zeroizing::new(format!(
                        "{{\"options\":{{\"cas\":{cas}}},\"data\":{}}}",
                        secrecy::ExposeSecret::expose_secret(fields)
                    ))),
                ),
                // There was nothing before: the new version is deleted.
                None => (Method::DELETE, None),
            };
            let url = self.http.url(&[&api], None);
            let reply = self
                .http
                .call(method, url, Some(&token), body.as_ref(), deadline)
                .await?;
            match reply.status.as_u16() {
                200 | 204 => Ok(()),
                _ => Err(super::unavailable(
                    &reply,
                    &format!("rolling `{api}` back"),
                    self.http.address(),
                )),
            }
        })
    }
}
