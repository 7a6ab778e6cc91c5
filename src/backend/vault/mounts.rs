//! The secrets engines a token can see (`sys/internal/ui/mounts`, which needs no policy of its
//! own and lists only mounts the token has a capability under): one request tells, for every
//! path of a run, whether it is a KV secret or an engine's API path (database/creds/app,
//! pki/issue/web), and the KV mount's version.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::http::Reply;
use crate::secret::SecretError;

#[derive(Debug, Clone, Default)]
pub struct Mounts {
    /// `database/` → `database`, `secret/` → `kv`.
    engines: BTreeMap<String, Engine>,
    /// The listing was refused: every path is read as KV, as before engines were told apart.
    unknown: bool,
}

#[derive(Debug, Clone)]
struct Engine {
    kind: String,
    kv_version: Option<String>,
}

/// Where a path is served from.
#[derive(Debug, PartialEq, Eq)]
pub enum Place<'a> {
    /// A KV secret, relative to the backend's `mount`.
    Kv,
    /// An API path of a secrets engine of this type, read as it is.
    Api { engine: &'a str },
}

impl Mounts {
    /// The listing refused (403): nothing is known.
    pub fn unknown() -> Mounts {
        Mounts {
            engines: BTreeMap::new(),
            unknown: true,
        }
    }

    pub fn parse(reply: &Reply) -> Result<Mounts, SecretError> {
        #[derive(Deserialize)]
        struct Body {
            data: Option<Data>,
        }
        #[derive(Deserialize)]
        struct Data {
            #[serde(default)]
            secret: BTreeMap<String, Mount>,
        }
        #[derive(Deserialize)]
        struct Mount {
            #[serde(rename = "type")]
            kind: Option<String>,
            options: Option<Options>,
        }
        #[derive(Deserialize)]
        struct Options {
            version: Option<String>,
        }
        let body: Body = serde_json::from_slice(&reply.body).map_err(|e| {
            SecretError::unavailable(format!(
                "unexpected reply listing the secrets engines ({})",
                crate::error::json_message(&e)
            ))
        })?;
        let engines = body
            .data
            .map(|d| d.secret)
            .unwrap_or_default()
            .into_iter()
            .map(|(path, m)| {
                let path = format!("{}/", path.trim_matches('/'));
                let engine = Engine {
                    kind: m.kind.unwrap_or_default(),
                    kv_version: m.options.and_then(|o| o.version),
                };
                (path, engine)
            })
            .collect();
        Ok(Mounts {
            engines,
            unknown: false,
        })
    }

    /// The engine mounted where `path` begins (the longest mount path that is a prefix).
    fn engine_of(&self, path: &str) -> Option<&Engine> {
        let path = format!("{}/", path.trim_matches('/'));
        self.engines
            .iter()
            .filter(|(mount, _)| path.starts_with(mount.as_str()))
            .max_by_key(|(mount, _)| mount.len())
            .map(|(_, e)| e)
    }

    /// A path inside a mount that is not KV is that engine's API path; anything else is a KV
    /// secret under the backend's `mount`.
    pub fn place(&self, path: &str) -> Place<'_> {
        match self.engine_of(path) {
            Some(e) if !is_kv(&e.kind) => Place::Api { engine: &e.kind },
            _ => Place::Kv,
        }
    }

    /// The KV mount's version; `Err` when `mount` names another kind of engine.
    pub fn kv_version(&self, mount: &str) -> Result<u8, SecretError> {
        let Some(engine) = self.engines.get(&format!("{}/", mount.trim_matches('/'))) else {
            // Not listed (no capability under it yet, or the listing refused): the modern
            // default; the read itself reports a denial or a missing mount.
            if !self.unknown {
                tracing::debug!(mount = %mount, "the KV mount is not among the token's; assuming KV v2 (set kv_version to be sure)");
            }
            return Ok(2);
        };
        if !is_kv(&engine.kind) {
            return Err(SecretError::not_found(format!(
                "mount `{mount}/` is a `{}` secrets engine, not KV; set `mount` to a KV mount",
                engine.kind
            )));
        }
        let v = if engine.kv_version.as_deref() == Some("2") {
            2
        } else {
            1
        };
        tracing::debug!(mount = %mount, kv_version = v, "detected the KV version");
        Ok(v)
    }
}

fn is_kv(kind: &str) -> bool {
    kind == "kv" || kind == "generic"
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use secrecy::zeroize::Zeroizing;

    fn listing() -> Mounts {
        let body = br#"{"data":{"auth":{},"secret":{
            "secret/":{"type":"kv","options":{"version":"2"}},
            "old/":{"type":"kv","options":null},
            "database/":{"type":"database","options":null},
            "pki/int/":{"type":"pki","options":null}}}}"#;
        Mounts::parse(&Reply {
            status: reqwest::StatusCode::OK,
            body: Zeroizing::new(body.to_vec()),
        })
        .unwrap()
    }

    #[test]
    fn paths_in_an_engine_that_is_not_kv_are_api_paths() {
        let m = listing();
        assert_eq!(
            m.place("database/creds/app"),
            Place::Api { engine: "database" }
        );
        assert_eq!(m.place("pki/int/issue/web"), Place::Api { engine: "pki" });
        assert_eq!(m.place("payments/db"), Place::Kv);
        // A mount is matched by whole segments: `databases/x` is not in `database/`.
        assert_eq!(m.place("databases/x"), Place::Kv);
        assert_eq!(m.place("pki/issue/web"), Place::Kv);
    }

    #[test]
    fn the_kv_version_comes_from_the_listing() {
        let m = listing();
        assert_eq!(m.kv_version("secret").unwrap(), 2);
        assert_eq!(m.kv_version("old").unwrap(), 1);
        assert_eq!(m.kv_version("absent").unwrap(), 2);
        let e = m.kv_version("database").unwrap_err();
        assert!(e.message.contains("`database` secrets engine"), "{e}");
    }
}
