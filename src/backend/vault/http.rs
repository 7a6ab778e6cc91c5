//! HTTP to Vault/OpenBao: one client whose connections are kept alive across requests, a timeout
//! on every request, and retries with exponential back-off and full jitter on what may pass by
//! itself (connection errors, timeouts, 5xx; 429 until the deadline, after Retry-After), never on
//! another 4xx, never past the deadline.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use crate::secret::SecretError;

/// First back-off step; each retry doubles it, up to `BACKOFF_CAP`.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// A rate-limited request is not sent again this close to the deadline.
const THROTTLED_MARGIN: Duration = Duration::from_millis(200);
/// The largest reply read: Vault's own storage refuses entries above 1 MiB by default, and a
/// listing of mounts is far smaller.
pub const MAX_REPLY: usize = 8 << 20;

#[derive(Debug)]
pub struct Http {
    client: reqwest::Client,
    address: Url,
    namespace: Option<String>,
    request_timeout: Duration,
    max_retries: u32,
}

/// A reply as received. The body may hold secrets: it is zeroized when dropped.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Zeroizing<Vec<u8>>,
}

impl Reply {
    /// The `errors` array Vault puts in a failed reply, joined; empty when there is none.
    pub fn errors(&self) -> String {
        #[derive(serde::Deserialize)]
        struct Errors {
            #[serde(default)]
            errors: Vec<String>,
        }
        serde_json::from_slice::<Errors>(&self.body)
            .map(|e| e.errors.join("; "))
            .unwrap_or_default()
    }

    pub fn warnings(&self) -> Vec<String> {
        #[derive(serde::Deserialize)]
        struct Warnings {
            #[serde(default)]
            warnings: Option<Vec<String>>,
        }
        serde_json::from_slice::<Warnings>(&self.body)
            .ok()
            .and_then(|w| w.warnings)
            .unwrap_or_default()
    }

    /// What the server said, for an error message: its `errors`, or the bare status.
    pub fn said(&self) -> String {
        let errors = self.errors();
        if errors.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            format!("HTTP {}: {errors}", self.status)
        }
    }
}

#[derive(Debug)]
pub struct Settings {
    pub address: Url,
    pub namespace: Option<String>,
    pub ca_certs: Vec<reqwest::Certificate>,
    pub skip_verify: bool,
    pub request_timeout: Duration,
    pub max_retries: u32,
    pub max_connections: usize,
}

impl Http {
    pub fn new(s: Settings) -> Result<Http, crate::error::Invalid> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(s.request_timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(s.max_connections)
            .pool_idle_timeout(Duration::from_secs(60))
            // A token must never follow a redirect to another host.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("secret-run/", env!("CARGO_PKG_VERSION")));
        if s.address.scheme() == "http" && s.ca_certs.is_empty() && !s.skip_verify {
            // Plain HTTP needs no roots: skip loading the system's store (hundreds of files).
            // Redirects are off, so nothing reaches an https:// URL with this configuration.
            let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("cannot set up TLS: {e}"))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            builder = builder.tls_backend_preconfigured(tls);
        } else if !s.ca_certs.is_empty() {
            // As the vault CLI does: a configured CA replaces the system's roots.
            builder = builder.tls_certs_only(s.ca_certs);
        }
        if s.skip_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {}", chain(&e)))?;
        Ok(Http {
            client,
            address: s.address,
            namespace: s.namespace,
            request_timeout: s.request_timeout,
            max_retries: s.max_retries,
        })
    }

    pub fn address(&self) -> &str {
        self.address.as_str().trim_end_matches('/')
    }

    /// `/v1/` followed by `segments` (each percent-encoded) and an optional query.
    pub fn url(&self, segments: &[&str], query: Option<(&str, &str)>) -> Url {
        let mut url = self.address.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("v1");
            for s in segments {
                path.extend(s.split('/').filter(|p| !p.is_empty()));
            }
        }
        if let Some((k, v)) = query {
            url.query_pairs_mut().append_pair(k, v);
        }
        url
    }

    /// Sends one request, retrying what may pass by itself. `Ok` carries any reply the retries
    /// ended on, a 5xx included, for the caller to explain; `Err` means no reply at all.
    pub async fn call(
        &self,
        method: Method,
        url: Url,
        token: Option<&SecretString>,
        body: Option<&Zeroizing<String>>,
        deadline: Instant,
    ) -> Result<Reply, SecretError> {
        let headers = self.headers(token)?;
        let (mut attempt, mut throttles): (u32, u32) = (0, 0);
        loop {
            let now = Instant::now();
            let limit = deadline.min(now + self.request_timeout);
            let mut request = self
                .client
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(body) = body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.as_bytes().to_vec());
            }
            let sent = async {
                let mut response = request.send().await.map_err(Received::Error)?;
                let status = response.status();
                if response
                    .content_length()
                    .is_some_and(|n| n > MAX_REPLY as u64)
                {
                    return Err(Received::TooLarge);
                }
                let retry_after = (status == StatusCode::TOO_MANY_REQUESTS)
                    .then(|| response.headers().get(reqwest::header::RETRY_AFTER))
                    .flatten()
                    .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s.min(60)));
                // Read piece by piece, so that a reply without a length is bounded too.
                let mut body = Zeroizing::new(Vec::new());
                while let Some(chunk) = response.chunk().await.map_err(Received::Error)? {
                    if body.len() + chunk.len() > MAX_REPLY {
                        return Err(Received::TooLarge);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok((Reply { status, body }, retry_after))
            };
            let mut retry_after = None;
            let failure = match tokio::time::timeout_at(limit, sent).await {
                Ok(Ok((reply, _))) if !retryable(reply.status) => return Ok(reply),
                Ok(Ok((reply, after))) => {
                    retry_after = after;
                    Failure::Reply(reply)
                }
                Ok(Err(Received::Error(e))) => Failure::Error(self.describe(&e), Some(e)),
                Ok(Err(Received::TooLarge)) => {
                    return Err(SecretError::unavailable(format!(
                        "{} sent a reply larger than {} MiB; that is no Vault reply (check `address`)",
                        self.address(),
                        MAX_REPLY >> 20
                    )));
                }
                Err(_) if limit == deadline => {
                    return Err(SecretError::unavailable(format!(
                        "{} did not answer before the resolve deadline (--timeout)",
                        self.address()
                    )));
                }
                Err(_) => Failure::Error(
                    format!(
                        "{} did not answer within {} (per-request timeout)",
                        self.address(),
                        humantime::format_duration(self.request_timeout)
                    ),
                    None,
                ),
            };
            // A rate limit (429) is waited out until the deadline, whatever `max_retries` says:
            // a fleet that meets a quota starts more slowly, never fails for it while there is
            // time. At least as long as the server's Retry-After asks.
            let throttled =
                matches!(&failure, Failure::Reply(r) if r.status == StatusCode::TOO_MANY_REQUESTS);
            let pause = if throttled {
                throttles += 1;
                backoff(throttles).max(retry_after.unwrap_or_default())
            } else {
                attempt += 1;
                backoff(attempt)
            };
            // A rate limit stops a little before the deadline, so that the last 429 (which
            // says why) is what the user reads, not the resolve deadline firing mid-request.
            let margin = if throttled {
                THROTTLED_MARGIN
            } else {
                Duration::ZERO
            };
            if (!throttled && attempt > self.max_retries)
                || Instant::now() + pause + margin >= deadline
            {
                return match failure {
                    Failure::Reply(reply) => Ok(reply),
                    Failure::Error(msg, cause) => {
                        let err = SecretError::unavailable(format!(
                            "{msg}; gave up after {attempt} attempt{}",
                            if attempt == 1 { "" } else { "s" }
                        ));
                        Err(match cause {
                            Some(cause) => err.with_source(cause),
                            None => err,
                        })
                    }
                };
            }
            tracing::debug!(
                url = %url,
                attempt,
                pause_ms = pause.as_millis() as u64,
                reason = %match &failure { Failure::Reply(r) => r.said(), Failure::Error(m, _) => m.clone() },
                "retrying"
            );
            tokio::time::sleep(pause).await;
        }
    }

    /// Why a request got no reply, in the fewest words that still say what to fix, told by
    /// the type of the cause: the resolver's error, the socket's, or else every cause in turn.
    fn describe(&self, e: &reqwest::Error) -> String {
        if find_cause::<hickory_resolver::net::NetError>(e).is_some() {
            let host = self.address.host_str().unwrap_or("?");
            return format!(
                "cannot reach {}: the name `{host}` does not resolve (DNS)",
                self.address()
            );
        }
        match find_cause::<std::io::Error>(e) {
            Some(io) => format!("cannot reach {} ({io})", self.address()),
            None => format!("cannot reach {} ({})", self.address(), chain(e)),
        }
    }

    fn headers(&self, token: Option<&SecretString>) -> Result<HeaderMap, SecretError> {
        let mut headers = HeaderMap::new();
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(token.expose_secret()).map_err(|_| {
                SecretError::denied("the Vault token contains characters an HTTP header cannot carry; check where it comes from")
            })?;
            // Sensitive headers are left out of reqwest's and hyper's debug output.
            value.set_sensitive(true);
            headers.insert("X-Vault-Token", value);
        }
        if let Some(ns) = &self.namespace {
            let value = HeaderValue::from_str(ns).map_err(|_| {
                SecretError::invalid(format!("namespace `{ns}` cannot be sent in an HTTP header"))
            })?;
            headers.insert("X-Vault-Namespace", value);
        }
        Ok(headers)
    }
}

enum Received {
    Error(reqwest::Error),
    TooLarge,
}

enum Failure {
    Reply(Reply),
    /// What to say, and the error it explains (none for a timeout).
    Error(String, Option<reqwest::Error>),
}

fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
}

/// Full jitter: a random pause up to the exponential step, so that many clients spread out.
fn backoff(attempt: u32) -> Duration {
    crate::duration::exponential(BACKOFF_BASE, attempt, BACKOFF_CAP).mul_f64(fastrand::f64())
}

/// The first error of type `T` among `e`'s causes.
fn find_cause<'e, T: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut next = e.source();
    while let Some(cause) = next {
        if let Some(found) = cause.downcast_ref::<T>() {
            return Some(found);
        }
        next = cause.source();
    }
    None
}

/// An error and its causes on one line ("tcp connect error: Connection refused (os error 111)"),
/// without the outermost "error sending request for url", which says nothing new.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..40 {
            let b = backoff(attempt);
            assert!(b <= BACKOFF_CAP, "{attempt}: {b:?}");
        }
        assert!(backoff(1) <= BACKOFF_BASE);
    }

    #[test]
    fn what_is_retried() {
        assert!(retryable(StatusCode::SERVICE_UNAVAILABLE));
        assert!(retryable(StatusCode::TOO_MANY_REQUESTS));
        assert!(retryable(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!retryable(StatusCode::FORBIDDEN));
        assert!(!retryable(StatusCode::NOT_FOUND));
        assert!(!retryable(StatusCode::BAD_REQUEST));
    }
}
