//! What the AWS backends (`aws-secrets-manager`, `aws-ssm`) share: the SDK configuration from the
//! standard chain (environment, profile, web identity / IRSA, ECS task role, instance metadata),
//! timeouts and retries inside the resolve deadline, a count of API calls, and errors that say
//! what to do instead of the SDK's chain of causes.
//!
//! ```toml
//! [backends.aws]
//! kind = "aws-secrets-manager"      # or "aws-ssm"
//! region = "us-east-1"              # else the standard chain (AWS_REGION, the profile)
//! prefix = "/payments/{env}/"
//! # endpoint_url = "https://vpce-….secretsmanager.us-east-1.vpce.amazonaws.com"   # else AWS_ENDPOINT_URL
//! # profile = "trading-prod"        # else AWS_PROFILE
//! # request_timeout = "10s"         # per attempt
//! # max_attempts = 4                # attempts per call, throttling included
//! # retry_mode = "standard"         # or "adaptive" (client-side rate limiting)
//! # max_parallel = 16               # calls in flight at once (aws-ssm: 8)
//! ```

pub mod secretsmanager;
pub mod ssm;
mod write;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::provider::error::CredentialsError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpResponse, Metadata};
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::error::Invalid;
use crate::secret::SecretError;

const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_ATTEMPTS: u32 = 4;
/// More calls in flight than this from one process only queue in the SDK's connection pool.
const MAX_PARALLEL: usize = 256;
/// Waiting out throttling that outlasted the SDK's attempts (full jitter below the curve).
const THROTTLED_BASE: Duration = Duration::from_secs(1);
const THROTTLED_CAP: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetryMode {
    #[default]
    Standard,
    Adaptive,
}

/// The fields every AWS backend has.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Common {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    #[serde(default, deserialize_with = "crate::duration::de_opt")]
    pub request_timeout: Option<Duration>,
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub retry_mode: RetryMode,
    pub max_parallel: Option<usize>,
}

impl Common {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_attempts == Some(0) {
            return Err("`max_attempts` must be at least 1".into());
        }
        if let Some(n) = self
            .max_parallel
            .filter(|n| !(1..=MAX_PARALLEL).contains(n))
        {
            return Err(Invalid(format!(
                "`max_parallel = {n}` must be between 1 and {MAX_PARALLEL}"
            )));
        }
        if let Some(url) = &self.endpoint_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(Invalid(format!(
                    "`endpoint_url = \"{url}\"` must be an http:// or https:// URL"
                )));
            }
        }
        Ok(())
    }
}

/// A staging label, a version id or a parameter version: anything but empty.
fn check_version(version: &str) -> Result<(), Invalid> {
    if version.trim().is_empty() {
        Err("`version` cannot be empty".into())
    } else {
        Ok(())
    }
}

/// Work given up at its deadline, with `late` as the error: the SDK's own timeouts are per
/// attempt, and loading its configuration (a profile, the instance metadata service) has none.
async fn within<T>(
    deadline: tokio::time::Instant,
    late: &str,
    work: impl std::future::Future<Output = Result<T, SecretError>>,
) -> Result<T, SecretError> {
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or_else(|_| Err(SecretError::unavailable(late)))
}

/// Calls again while AWS throttles the call after the SDK's own attempts (`max_attempts`),
/// with jittered back-off, until the resolve deadline (`within`) ends the wait: a fleet that
/// meets a quota starts more slowly, and never fails for it while the deadline leaves time.
async fn while_throttled<T, E, F>(
    mut call: impl FnMut() -> F,
) -> Result<T, SdkError<E, HttpResponse>>
where
    E: ProvideErrorMetadata,
    F: std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
{
    let mut round = 0;
    loop {
        match call().await {
            Err(e) if is_throttled(&e) => {
                round += 1;
                let pause = crate::duration::exponential(THROTTLED_BASE, round, THROTTLED_CAP)
                    .mul_f64(fastrand::f64());
                tracing::debug!(
                    round,
                    pause_ms = pause.as_millis() as u64,
                    "still throttled after the SDK's attempts; calling again"
                );
                tokio::time::sleep(pause).await;
            }
            other => return other,
        }
    }
}

/// The SDK configuration, loaded once, on first use (loading may read profile files and ask
/// the instance metadata service, which only a real fetch should pay for).
#[derive(Debug)]
pub struct Sdk {
    common: Common,
    config: OnceCell<SdkConfig>,
    calls: Arc<Counts>,
}

/// API calls made (every attempt) and those AWS throttled.
#[derive(Debug, Default)]
pub struct Counts {
    calls: AtomicUsize,
    throttled: AtomicUsize,
}

impl Sdk {
    pub fn new(common: Common) -> Sdk {
        Sdk {
            common,
            config: OnceCell::new(),
            calls: Arc::new(Counts::default()),
        }
    }

    pub async fn config(&self) -> Result<&SdkConfig, SecretError> {
        self.config
            .get_or_try_init(|| async {
                let c = &self.common;
                let retry = match c.retry_mode {
                    RetryMode::Standard => RetryConfig::standard(),
                    RetryMode::Adaptive => RetryConfig::adaptive(),
                }
                .with_max_attempts(c.max_attempts.unwrap_or(DEFAULT_ATTEMPTS));
                let timeouts = TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(c.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT))
                    .build();
                let mut loader = aws_config::defaults(BehaviorVersion::latest())
                    .retry_config(retry)
                    .timeout_config(timeouts);
                if let Some(region) = &c.region {
                    loader = loader.region(aws_config::Region::new(region.clone()));
                }
                if let Some(profile) = &c.profile {
                    loader = loader.profile_name(profile);
                }
                if let Some(url) = &c.endpoint_url {
                    loader = loader.endpoint_url(url);
                }
                let config = loader.load().await;
                if config.region().is_none() {
                    return Err(SecretError::misconfigured(
                        "no AWS region: set `region` in the backend's table, or AWS_REGION, or a region in the AWS profile",
                    ));
                }
                Ok(config)
            })
            .await
    }

    pub fn region(&self) -> String {
        self.config
            .get()
            .and_then(|c| c.region())
            .map_or_else(|| "?".to_owned(), ToString::to_string)
    }

    /// Counts every attempt of every call (retries included) and logs it at debug level.
    pub fn counter(&self) -> CallCounter {
        CallCounter(Arc::clone(&self.calls))
    }

    pub fn calls(&self) -> usize {
        self.calls.calls.load(Ordering::Relaxed)
    }

    /// Calls made and calls throttled, for `check --json`.
    pub fn counts(&self) -> crate::backend::Calls {
        crate::backend::Calls {
            calls: self.calls(),
            throttled: self.calls.throttled.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CallCounter(Arc<Counts>);

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "secret-run call counter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let n = self.0.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let (service, operation) = cfg
            .load::<Metadata>()
            .map_or(("?", "?"), |m| (m.service(), m.name()));
        tracing::debug!(service, operation, call = n, "AWS API call");
        Ok(())
    }

    /// Refuses a reply larger than `MAX_REPLY` before the SDK reads it into memory: a
    /// misdirected `endpoint_url` must not make secret-run read a gigabyte. AWS's JSON replies
    /// carry their length; one that comes without it is bounded by the attempt timeout.
    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let response = context.response();
        // `Code` or `Code:namespace-url`: the same codes `is_throttled` knows.
        let throttled = response
            .headers()
            .get("x-amzn-errortype")
            .and_then(|t| t.split(':').next())
            .is_some_and(is_throttling_code);
        if throttled {
            let n = self.0.throttled.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(throttled = n, "AWS throttled a call (its API's rate quota)");
        }
        let declared = response
            .headers()
            .get("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .or_else(|| response.body().content_length());
        match declared {
            Some(n) if n > MAX_REPLY => Err(format!(
                "the reply is {n} bytes, more than the {} MiB secret-run reads from AWS",
                MAX_REPLY >> 20
            )
            .into()),
            _ => Ok(()),
        }
    }
}

/// The largest AWS reply read (a batch of 20 secrets of 64 KiB each is 1.3 MB of JSON).
pub const MAX_REPLY: u64 = 16 << 20;

/// AWS refused the call for its rate (the account's quota for that API).
pub fn is_throttled<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    err.as_service_error()
        .and_then(|e| e.code())
        .is_some_and(is_throttling_code)
}

/// The error codes AWS APIs answer a call over their rate with.
fn is_throttling_code(code: &str) -> bool {
    matches!(
        code,
        "ThrottlingException" | "TooManyRequestsException" | "Throttling" | "RequestLimitExceeded"
    )
}

/// Explains an SDK error that is not specific to one secret: credentials, network, timeouts,
/// throttling, access. `action` is the IAM action the call needs (`secretsmanager:GetSecretValue`).
pub fn explain<E>(
    err: &SdkError<E, HttpResponse>,
    action: &str,
    region: &str,
    target: &str,
) -> SecretError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let causes = causes(err);
    if !matches!(err, SdkError::ServiceError(_)) {
        if let Some(e) = find_cause::<CredentialsError>(err) {
            return credentials_error(e, &causes);
        }
    }
    match err {
        SdkError::ServiceError(ctx) => {
            let e = ctx.err();
            let code = e.code().unwrap_or("");
            let message = e.message().unwrap_or("");
            match code {
                _ if is_denied(err) => SecretError::denied(format!(
                    "access denied to {target} in {region}: the IAM policy needs `{action}`{} ({message})",
                    if action.starts_with("ssm:") {
                        " (and `kms:Decrypt` on the key of a SecureString)"
                    } else {
                        ""
                    }
                )),
                "UnrecognizedClientException"
                | "InvalidClientTokenId"
                | "InvalidSignatureException"
                | "ExpiredTokenException"
                | "SignatureDoesNotMatch" => SecretError::denied(format!(
                    "AWS refused the credentials ({code}: {message}); check AWS_ACCESS_KEY_ID / the profile, or refresh an expired session"
                )),
                "ThrottlingException" | "TooManyRequestsException" => {
                    SecretError::unavailable(format!(
                        "AWS throttled the calls for {target} past the retries ({message}); raise `--timeout` or use `retry_mode = \"adaptive\"`"
                    ))
                }
                _ => SecretError::unavailable(format!(
                    "AWS returned {code} for {target} in {region}: {message}"
                )),
            }
        }
        SdkError::TimeoutError(_) => SecretError::unavailable(format!(
            "AWS did not answer for {target} in {region} in time (per-attempt `request_timeout`)"
        )),
        SdkError::DispatchFailure(_) => SecretError::unavailable(format!(
            "cannot reach AWS for {target} in {region} ({causes})"
        )),
        _ => SecretError::unavailable(format!("AWS call for {target} failed ({causes})")),
    }
}

/// The credential chain gave nothing: none configured, a provider that did not answer, one
/// configured wrongly.
fn credentials_error(e: &CredentialsError, causes: &str) -> SecretError {
    match e {
        CredentialsError::CredentialsNotLoaded(_) => SecretError::denied(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, choose a profile (AWS_PROFILE or `profile`), or run where a role is provided (IRSA / web identity, ECS task role, instance profile)",
        ),
        CredentialsError::ProviderTimedOut(_) => SecretError::unavailable(format!(
            "the AWS credential provider did not answer in time ({causes})"
        )),
        _ => SecretError::denied(format!("cannot load AWS credentials ({causes})")),
    }
}

/// The first error of type `T` among `e` and its causes.
fn find_cause<'e, T: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut next = Some(e);
    while let Some(cause) = next {
        if let Some(found) = cause.downcast_ref::<T>() {
            return Some(found);
        }
        next = cause.source();
    }
    None
}

/// Whether the call was refused by IAM. AWS says so with an `AccessDenied…` code; moto (and
/// some proxies) only with a bare 403 whose body the SDK cannot parse.
pub fn is_denied<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code().unwrap_or("");
            code.starts_with("AccessDenied")
                || code == "UnauthorizedOperation"
                || (code.is_empty() && ctx.raw().status().as_u16() == 403)
        }
        _ => false,
    }
}

/// An error's causes on one line, without repeats.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// A timestamp as `2026-11-26T04:31:18Z`.
pub fn date(d: &aws_smithy_types::DateTime) -> Option<String> {
    d.fmt(aws_smithy_types::date_time::Format::DateTime)
        .ok()
        .and_then(|s| super::whole_seconds(&s))
}
