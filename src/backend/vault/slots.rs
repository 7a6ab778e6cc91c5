//! Restart slots for a fleet (`[run] max_concurrent_restarts`): a KV v2 secret whose fields are
//! the holders, each with the second its slot expires. Taking or giving back a slot is a read,
//! then a check-and-set write of the whole set: two replicas racing for the last slot cannot
//! both win, and a replica that dies holding one loses it when it expires.

use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::Method;
use secrecy::zeroize::Zeroizing;
use tokio::time::Instant;

use super::VaultBackend;
use crate::backend::Slots;
use crate::secret::SecretError;

/// Attempts at one change of the set when other replicas keep winning the check-and-set.
const ATTEMPTS: u32 = 8;

impl Slots for VaultBackend {
    fn acquire<'a>(
        &'a self,
        path: &'a str,
        n: u32,
        holder: &'a str,
        ttl: Duration,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<bool, SecretError>> {
        Box::pin(async move {
            let until = crate::duration::unix_now() + ttl.as_secs().max(1);
            self.change_slots(path, deadline, |slots| {
                let now = crate::duration::unix_now();
                slots.retain(|_, v| v.as_str().and_then(|s| s.parse::<u64>().ok()) > Some(now));
                if !slots.contains_key(holder) && slots.len() >= n as usize {
                    return false;
                }
                slots.insert(holder.to_owned(), until.to_string().into());
                true
            })
            .await
        })
    }

    fn release<'a>(
        &'a self,
        path: &'a str,
        holder: &'a str,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), SecretError>> {
        Box::pin(async move {
            self.change_slots(path, deadline, |slots| slots.remove(holder).is_some())
                .await
                .map(|_| ())
        })
    }
}

impl VaultBackend {
    /// Reads the set, lets `change` edit it (`false`: nothing to write), writes it back with
    /// check-and-set; again when another replica wrote in between. The outcome of `change`.
    async fn change_slots(
        &self,
        path: &str,
        deadline: Instant,
        mut change: impl FnMut(&mut serde_json::Map<String, serde_json::Value>) -> bool,
    ) -> Result<bool, SecretError> {
        let token = self.auth.token(&self.http, deadline).await?;
        let api = format!("{}/data/{}", self.mount, path.trim_matches('/'));
        for attempt in 0..ATTEMPTS {
            let current = self.current(&api, 2, &token, deadline).await?;
            let mut slots: serde_json::Map<String, serde_json::Value> = current
                .fields
                .as_deref()
                .and_then(|f| serde_json::from_str(f).ok())
                .unwrap_or_default();
            if !change(&mut slots) {
                return Ok(false);
            }
            let body = Zeroizing::new(
                serde_json::json!({ "options": { "cas": current.version }, "data": slots })
                    .to_string(),
            );
            let url = self.http.url(&[&api], None);
            let reply = self
                .http
                .call(Method::POST, url, Some(&token), Some(&body), deadline)
                .await?;
            match reply.status.as_u16() {
                200 | 204 => return Ok(true),
                400 if reply.errors().contains("check-and-set") => {
                    // Another replica changed the set: read it again, a little later.
                    let pause =
                        Duration::from_millis(20 + fastrand::u64(..50) * u64::from(attempt + 1));
                    tokio::time::sleep(pause).await;
                }
                403 => {
                    return Err(SecretError::denied(format!(
                        "permission denied on the restart slots `{api}` ({}); the token's policy needs `read`, `create` and `update` there",
                        reply.said()
                    )));
                }
                _ => {
                    return Err(super::unavailable(
                        &reply,
                        &format!("writing the restart slots `{api}`"),
                        self.http.address(),
                    ));
                }
            }
        }
        Err(SecretError::unavailable(format!(
            "the restart slots `{api}` kept changing under {ATTEMPTS} attempts"
        )))
    }
}
