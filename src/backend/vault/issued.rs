//! Credentials a secrets engine issues on request (database/creds/app, pki/issue/web,
//! aws/sts/role): read with GET, or POST with the entry's `params`; the reply's lease, or the
//! validity of the certificate it carries, goes with the values. Leases are renewed and revoked
//! through `sys/leases/renew` and `sys/leases/revoke`.

use std::time::{Duration, SystemTime};

use reqwest::Method;
use secrecy::SecretString;
use secrecy::zeroize::Zeroizing;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::VaultBackend;
use super::http::Reply;
use crate::backend::{Fetched, Lease, LeaseId, Request};
use crate::secret::SecretError;

impl VaultBackend {
    /// Reads (issues) `request` at the API path of an `engine` mount.
    pub(super) async fn read_api(
        &self,
        request: &Request,
        engine: &str,
        token: &SecretString,
        deadline: Instant,
    ) -> Result<Fetched, SecretError> {
        let path = request.path.trim_matches('/');
        if request.version.is_some() {
            return Err(SecretError::invalid(format!(
                "`{path}` is a path of the `{engine}` secrets engine, not a KV secret: it has no versions; remove `version`"
            )));
        }
        if !self.issue {
            return Ok(Fetched::unissued(format!(
                "`{engine}` endpoint: not read, reading it issues a credential; `check --issue` issues one and revokes it"
            )));
        }
        let (method, body) = match &request.params {
            Some(p) => (Method::POST, Some(Zeroizing::new(p.clone()))),
            None => (Method::GET, None),
        };
        let url = self.http.url(&[path], None);
        let reply = self
            .http
            .call(method.clone(), url, Some(token), body.as_ref(), deadline)
            .await?;
        let need = if method == Method::POST {
            "update"
        } else {
            "read"
        };
        match reply.status.as_u16() {
            200 => issued(&reply, path).map(|mut f| {
                if let Some(lease) = f.lease.as_mut().filter(|l| l.id.is_some()) {
                    lease.bound = self.auth.token_end();
                }
                f
            }),
            204 => Err(SecretError::not_found(format!(
                "`{path}` answered with no data: it issues nothing"
            ))),
            // What a role refuses (a common name outside allowed_domains, a TTL above its max)
            // is a 400 naming the reason.
            400 => Err(SecretError::invalid(format!(
                "`{path}` refused the request ({}){}",
                reply.said(),
                if request.params.is_some() {
                    "; check the entry's `params` against the role"
                } else {
                    "; an endpoint that issues on request may need `params`"
                }
            ))),
            403 => Err(SecretError::denied(format!(
                "permission denied on `{path}` ({}); the token's policy needs `{need}` on path \"{path}\"",
                reply.said()
            ))),
            404 => Err(SecretError::not_found(format!(
                "no role or endpoint at `{path}` in the `{engine}` secrets engine ({})",
                reply.said()
            ))),
            405 => Err(SecretError::invalid(format!(
                "`{path}` does not take {method} ({}); {}",
                reply.said(),
                if request.params.is_some() {
                    "remove `params`"
                } else {
                    "an issuing endpoint is written to: give the entry `params`"
                }
            ))),
            _ => Err(super::unavailable(
                &reply,
                &format!("issuing `{path}`"),
                self.http.address(),
            )),
        }
    }

    pub(super) async fn renew_lease(
        &self,
        lease: &LeaseId,
        increment: Duration,
        deadline: Instant,
    ) -> Result<Duration, SecretError> {
        #[derive(Deserialize)]
        struct Renewed {
            lease_duration: u64,
        }
        let body = serde_json::json!({
            "lease_id": lease.expose(),
            "increment": increment.as_secs().max(1),
        });
        let reply = self.lease_call("renew", &body, deadline).await?;
        match reply.status.as_u16() {
            200 => {
                let r: Renewed = serde_json::from_slice(&reply.body).map_err(|e| {
                    SecretError::unavailable(format!(
                        "unexpected reply renewing lease {} ({})",
                        lease.shown(),
                        crate::error::json_message(&e)
                    ))
                })?;
                Ok(crate::duration::clamp(Duration::from_secs(
                    r.lease_duration,
                )))
            }
            _ => Err(self.lease_refused(&reply, "renew", lease)),
        }
    }

    pub(super) async fn revoke_lease(
        &self,
        lease: &LeaseId,
        deadline: Instant,
    ) -> Result<(), SecretError> {
        let body = serde_json::json!({ "lease_id": lease.expose() });
        let reply = self.lease_call("revoke", &body, deadline).await?;
        match reply.status.as_u16() {
            200 | 204 => Ok(()),
            _ => Err(self.lease_refused(&reply, "revoke", lease)),
        }
    }

    async fn lease_call(
        &self,
        what: &str,
        body: &serde_json::Value,
        deadline: Instant,
    ) -> Result<Reply, SecretError> {
        let token = self.auth.token(&self.http, deadline).await?;
        let url = self.http.url(&["sys", "leases", what], None);
        let body = Zeroizing::new(body.to_string());
        self.http
            .call(Method::PUT, url, Some(&token), Some(&body), deadline)
            .await
    }

    fn lease_refused(&self, reply: &Reply, what: &str, lease: &LeaseId) -> SecretError {
        let shown = lease.shown();
        match reply.status.as_u16() {
            // Gone (revoked by someone, expired) or past its maximum: only a new one will do.
            400 | 404 => SecretError::not_found(format!(
                "lease {shown} cannot be {what}ed ({})",
                reply.said()
            )),
            403 => SecretError::denied(format!(
                "permission denied to {what} lease {shown} ({}); the token's policy needs `update` on path \"sys/leases/{what}\"{}",
                reply.said(),
                if what == "revoke" {
                    ", or set `revoke = false` on the backend"
                } else {
                    ""
                }
            )),
            _ => super::unavailable(
                reply,
                &format!("{what}ing lease {shown}"),
                self.http.address(),
            ),
        }
    }
}

/// The values of an issuing reply (its `data` object) and how long they last.
fn issued(reply: &Reply, path: &str) -> Result<Fetched, SecretError> {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(default)]
        lease_id: String,
        #[serde(default)]
        lease_duration: u64,
        #[serde(default)]
        renewable: bool,
        #[serde(borrow)]
        data: Option<&'a RawValue>,
    }
    // Owned: the PEM's line breaks are escaped in the JSON. A certificate is public.
    #[derive(Deserialize)]
    struct Certificate {
        certificate: Option<String>,
    }
    let body: Body = serde_json::from_slice(&reply.body).map_err(|e| {
        SecretError::unavailable(format!(
            "unexpected reply from `{path}` ({})",
            crate::error::json_message(&e)
        ))
    })?;
    let Some(data) = body.data.filter(|d| d.get().starts_with('{')) else {
        return Err(SecretError::not_found(format!(
            "`{path}` answered without data to read"
        )));
    };
    let lease = if !body.lease_id.is_empty() && body.lease_duration > 0 {
        Some(Lease::granted(
            Some(LeaseId::new(&body.lease_id)),
            body.renewable,
            crate::duration::clamp(Duration::from_secs(body.lease_duration)),
        ))
    } else {
        // A certificate lasts until its notAfter, lease or not.
        serde_json::from_str::<Certificate>(data.get())
            .ok()
            .and_then(|c| c.certificate)
            .and_then(|pem| validity(&pem))
            .map(|(not_before, ends)| Lease {
                id: None,
                renewable: false,
                // PKI backdates notBefore (30 s by default): measured from then, a short-lived
                // certificate would be due for replacement the moment it arrives.
                starts: not_before.max(SystemTime::now()).min(ends),
                ends,
                bound: None,
            })
    };
    let about = lease.as_ref().map(Lease::about);
    let mut fetched = Fetched::fields(SecretString::from(data.get()), None, about);
    fetched.lease = lease;
    Ok(fetched)
}

/// A PEM certificate's notBefore and notAfter.
fn validity(pem: &str) -> Option<(SystemTime, SystemTime)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(t.timestamp()).ok()?;
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    };
    let v = cert.validity();
    Some((at(v.not_before)?, at(v.not_after)?))
}
