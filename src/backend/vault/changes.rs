//! Reading again only what changed: after a first read, a KV v2 secret is re-read (a `watch`
//! tick, a restart after a failure) by asking its metadata for the current version number, and
//! its value only when that number moved. At fleet scale this keeps values off the wire and out
//! of Vault's audit log on every tick. The reload signal (`refresh`) forgets what was read, so
//! that an operator's reload reads every value.

use std::collections::HashMap;

use reqwest::Method;
use secrecy::SecretString;
use serde::Deserialize;
use tokio::time::Instant;

use super::VaultBackend;
use crate::backend::{Fetched, Request};

/// What was read last for each KV v2 request (not pinned to a version), with its version.
#[derive(Debug, Default)]
pub struct Seen {
    read: crate::backend::Seen<u64>,
    /// The token may not read metadata: every re-read reads the value.
    metadata_denied: std::sync::atomic::AtomicBool,
}

impl Seen {
    pub fn forget(&self) {
        self.read.forget();
    }

    pub fn remember(&self, request: &Request, fetched: &Fetched) {
        if let Some(v) = fetched.version.as_deref().and_then(|v| v.parse().ok()) {
            self.read.remember(request, v, fetched);
        }
    }
}

impl VaultBackend {
    /// The value of `request` read before, when its metadata says it is still the current
    /// version; `None` when it must be read (never read, changed, or metadata not readable).
    pub(super) async fn unchanged(
        &self,
        request: &Request,
        token: &SecretString,
        deadline: Instant,
    ) -> Option<Fetched> {
        if request.version.is_some()
            || self
                .seen
                .metadata_denied
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return None;
        }
        let known = self.seen.read.version(request)?;
        #[derive(Deserialize)]
        struct Body {
            data: Option<Meta>,
        }
        #[derive(Deserialize)]
        struct Meta {
            current_version: Option<u64>,
            #[serde(default)]
            versions: HashMap<String, Version>,
        }
        #[derive(Deserialize)]
        struct Version {
            #[serde(default)]
            deletion_time: String,
            #[serde(default)]
            destroyed: bool,
        }
        let path = request.path.trim_matches('/');
        let url = self
            .http
            .url(&[&format!("{}/metadata/{path}", self.mount)], None);
        let reply = self
            .http
            .call(Method::GET, url, Some(token), None, deadline)
            .await
            .ok()?;
        match reply.status.as_u16() {
            200 => {}
            403 => {
                tracing::debug!(
                    "the token may not read KV metadata; re-reads read values (grant `read` on \"{}/metadata/*\" to spare them)",
                    self.mount
                );
                self.seen
                    .metadata_denied
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return None;
            }
            _ => return None,
        }
        let meta = serde_json::from_slice::<Body>(&reply.body).ok()?.data?;
        let current = meta.current_version?;
        // A deleted or destroyed current version is read, so that it is reported as gone.
        let live = meta
            .versions
            .get(&current.to_string())
            .is_some_and(|v| v.deletion_time.is_empty() && !v.destroyed);
        if current != known || !live {
            tracing::debug!(path = %path, known, current, "a new version; reading it");
            return None;
        }
        tracing::trace!(path = %path, version = current, "unchanged; its value is not read again");
        self.seen.read.unchanged(request, &current)
    }
}
