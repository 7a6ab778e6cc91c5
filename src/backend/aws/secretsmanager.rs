//! The `aws-secrets-manager` backend.
//!
//! ```toml
//! [backends.aws]
//! kind = "aws-secrets-manager"
//! region = "us-east-1"              # else the standard chain (AWS_REGION, the profile)
//! prefix = "/dashtam/{env}/"        # the secret id is prefix + path
//! # endpoint_url = "https://vpce-….secretsmanager.us-east-1.vpce.amazonaws.com"   # else AWS_ENDPOINT_URL
//! # profile = "trading-prod"
//! # encoding = "base64"             # pass a binary secret on base64-encoded (else it must be UTF-8)
//! # recheck = "describe"            # re-reads ask DescribeSecret first; "values": read them all
//! # throttled_batch = "single-reads" # a throttled batch's secrets are read one by one; "retry": wait and batch again
//!
//! [secrets]
//! API_KEY_ID  = { backend = "aws", path = "alpaca", key = "api_key_id" }
//! DB_PASSWORD = { backend = "aws", path = "database/creds", key = "/primary/password", version = "AWSPREVIOUS" }
//! ```
//!
//! `version` is a staging label (`AWSCURRENT`, `AWSPREVIOUS`, a custom one) or a version id (a
//! UUID). Two or more current secrets go through `BatchGetSecretValue`, 20 per call; when the
//! policy does not allow it, or AWS throttles it, secret-run falls back to parallel
//! `GetSecretValue` calls (`throttled_batch = "retry"` waits and batches again instead: a
//! twentieth of the calls, and a slower start when the fleet meets the quota). A re-read
//! (`watch`, a restart) asks `DescribeSecret` which version is current and reads only what
//! moved (`recheck = "describe"`, the default: within quota at any fleet size, but one call per
//! secret); `recheck = "values"` reads every value again in batches (a twentieth of the calls,
//! under the batch API's 100 calls/s). docs/scale.md has the numbers.

use std::collections::HashMap;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use aws_sdk_secretsmanager::primitives::Blob;
use futures_util::StreamExt;
use secrecy::SecretString;
use secrecy::zeroize::Zeroizing;
use serde::Deserialize;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::{Common, Sdk, date, explain};
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::backend::{
    Backend, Context, FetchResult, Fetched, Kind, Reader, RemoteRead, Request, typed,
};
use crate::error::Invalid;
use crate::secret::{SecretError, value_from_bytes};

/// `BatchGetSecretValue` takes at most 20 ids.
const BATCH: usize = 20;
const DEFAULT_PARALLEL: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Base64,
}

pub const KIND: Kind = Kind {
    name: "aws-secrets-manager",
    builtin: None,
    parse: |table| {
        let config = typed::<Config>(table)?;
        config.common.validate()?;
        Ok(Box::new(config))
    },
};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(flatten)]
    pub common: Common,
    pub encoding: Option<Encoding>,
    #[serde(default)]
    pub recheck: Recheck,
    #[serde(default)]
    pub throttled_batch: ThrottledBatch,
}

/// What becomes of a batch call AWS throttled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThrottledBatch {
    /// Its secrets are read with `GetSecretValue` (quota 10,000/s), at once.
    #[default]
    SingleReads,
    /// It is called again after a jittered back-off, within the deadline.
    Retry,
}

/// How a re-read finds what changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recheck {
    /// `DescribeSecret` per secret, values only for those that moved.
    #[default]
    Describe,
    /// Every value read again.
    Values,
}

#[derive(Debug)]
pub struct SecretsManager {
    sdk: Sdk,
    client: OnceCell<Client>,
    encoding: Option<Encoding>,
    /// The current version id and value read last for each unpinned secret: a re-read
    /// (`watch`, a restart) asks `DescribeSecret` (40,000 calls/s per account) which version is
    /// current, and reads values (`BatchGetSecretValue`: 100 calls/s) only for those that moved.
    seen: crate::backend::Seen<String>,
    recheck: Recheck,
    throttled_batch: ThrottledBatch,
    parallel: usize,
}

/// A version id is a UUID; anything else names a staging label.
fn is_version_id(v: &str) -> bool {
    v.len() == 36
        && v.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// What one secret's reply holds, whichever call brought it.
struct Reply<'a> {
    string: Option<&'a str>,
    binary: Option<&'a Blob>,
    version_id: Option<&'a str>,
    stages: &'a [String],
    created: Option<&'a aws_smithy_types::DateTime>,
}

impl super::super::Config for Config {
    fn check_version(&self, version: &str) -> Option<Result<(), Invalid>> {
        Some(super::check_version(version))
    }

    fn build(&self, _ctx: &Context) -> Result<Arc<dyn Backend>, Invalid> {
        Ok(Arc::new(SecretsManager::new(self)))
    }
}

impl Backend for SecretsManager {
    fn reader(&self) -> Reader<'_> {
        Reader::Remote(self)
    }

    fn writer(&self) -> Option<&dyn crate::backend::WriteValue> {
        Some(self)
    }

    fn calls(&self) -> Option<crate::backend::Calls> {
        Some(self.sdk.counts())
    }

    fn rotation(&self) -> Option<&dyn crate::backend::Rotate> {
        Some(self)
    }

    fn refresh(&self) {
        self.seen.forget();
    }
}

impl RemoteRead for SecretsManager {
    fn fetch<'a>(
        &'a self,
        requests: &'a [Request],
        deadline: Instant,
    ) -> BoxFuture<'a, FetchResult> {
        Box::pin(super::within(
            deadline,
            "AWS Secrets Manager did not answer before the resolve deadline (--timeout)",
            self.fetch_all(requests),
        ))
    }
}

impl SecretsManager {
    fn new(config: &Config) -> Self {
        SecretsManager {
            sdk: Sdk::new(config.common.clone()),
            client: OnceCell::new(),
            encoding: config.encoding,
            seen: crate::backend::Seen::default(),
            recheck: config.recheck,
            throttled_batch: config.throttled_batch,
            parallel: config.common.max_parallel.unwrap_or(DEFAULT_PARALLEL),
        }
    }

    /// The value read before, when `DescribeSecret` says its version is still AWSCURRENT.
    async fn unchanged(&self, client: &Client, r: &Request) -> Option<Fetched> {
        let known = self.seen.version(r)?;
        let out = client
            .describe_secret()
            .secret_id(&r.path)
            .send()
            .await
            .ok()?;
        let current = out
            .version_ids_to_stages()?
            .iter()
            .find_map(|(id, stages)| {
                stages
                    .iter()
                    .any(|s| s == "AWSCURRENT")
                    .then_some(id.clone())
            })?;
        if current != known {
            tracing::debug!(secret = %r.path, "a new AWSCURRENT version; reading it");
            return None;
        }
        tracing::trace!(secret = %r.path, "unchanged; its value is not read again");
        self.seen.unchanged(r, &current)
    }

    /// The region calls go to, for messages.
    pub(super) fn region(&self) -> String {
        self.sdk.region()
    }

    pub(super) async fn client(&self) -> Result<&Client, SecretError> {
        self.client
            .get_or_try_init(|| async {
                let sdk = self.sdk.config().await?;
                let config = aws_sdk_secretsmanager::config::Builder::from(sdk)
                    .interceptor(self.sdk.counter())
                    .build();
                Ok(Client::from_conf(config))
            })
            .await
    }

    /// API calls made so far, retries included.
    pub fn calls(&self) -> usize {
        self.sdk.calls()
    }

    async fn fetch_all(&self, requests: &[Request]) -> FetchResult {
        let client = self.client().await?;
        let mut results: HashMap<usize, Result<Fetched, SecretError>> = HashMap::new();
        // Read before: asked which version is current, and kept when it did not move.
        let known: Vec<usize> = (0..requests.len())
            .filter(|&i| {
                self.recheck == Recheck::Describe && self.seen.version(&requests[i]).is_some()
            })
            .collect();
        let checks: Vec<_> = known
            .iter()
            .map(|&i| async move { (i, self.unchanged(client, &requests[i]).await) })
            .collect();
        let checked: Vec<(usize, Option<Fetched>)> = futures_util::stream::iter(checks)
            .buffer_unordered(self.parallel)
            .collect()
            .await;
        for (i, kept) in checked {
            if let Some(f) = kept {
                results.insert(i, Ok(f));
            }
        }
        // Current values can be batched; a pinned stage or version id cannot.
        let (current, pinned): (Vec<usize>, Vec<usize>) = (0..requests.len())
            .filter(|i| !results.contains_key(i))
            .partition(|&i| {
                requests[i]
                    .version
                    .as_deref()
                    .is_none_or(|v| v == "AWSCURRENT")
            });
        let mut singles = pinned;
        if current.len() >= 2 {
            match self.batch(client, requests, &current).await {
                Ok((found, throttled)) => {
                    results.extend(found);
                    if !throttled.is_empty() {
                        tracing::info!(
                            secrets = throttled.len(),
                            "BatchGetSecretValue was throttled (or did not get through); reading those secrets with GetSecretValue"
                        );
                        singles.extend(throttled);
                    }
                }
                Err(BatchRefused(e)) => {
                    tracing::debug!(error = %e, "BatchGetSecretValue is not allowed; falling back to GetSecretValue per secret");
                    singles.extend(&current);
                }
            }
        } else {
            singles.extend(&current);
        }
        let gets: Vec<_> = singles
            .iter()
            .map(|&i| async move { (i, self.get(client, &requests[i]).await) })
            .collect();
        let got: Vec<_> = futures_util::stream::iter(gets)
            .buffer_unordered(self.parallel)
            .collect()
            .await;
        results.extend(got);
        for (i, r) in &results {
            if let Ok(f) = r {
                if let Some(v) = &f.version {
                    self.seen.remember(&requests[*i], v.clone(), f);
                }
            }
        }
        tracing::debug!(
            calls = self.calls(),
            secrets = requests.len(),
            "Secrets Manager reads done"
        );
        crate::backend::in_order(results, requests.len())
    }

    async fn get(&self, client: &Client, r: &Request) -> Result<Fetched, SecretError> {
        let mut call = client.get_secret_value().secret_id(&r.path);
        call = match r.version.as_deref() {
            Some(v) if is_version_id(v) => call.version_id(v),
            Some(v) => call.version_stage(v),
            // Named, though it is the default: a service that only moved the label (moto)
            // may otherwise answer with the version the secret was created with.
            None => call.version_stage("AWSCURRENT"),
        };
        let out = super::while_throttled(|| call.clone().send()).await.map_err(|e| {
            let region = self.sdk.region();
            match e.as_service_error() {
                Some(se) if se.is_resource_not_found_exception() => SecretError::not_found(format!(
                    "no secret `{}`{} in {region}",
                    r.path,
                    r.version.as_deref().map(|v| format!(" with version `{v}`")).unwrap_or_default()
                )),
                Some(se) if se.is_decryption_failure() => SecretError::denied(format!(
                    "Secrets Manager cannot decrypt `{}` with its KMS key ({}): the caller needs `kms:Decrypt` on that key",
                    r.path,
                    se.message().unwrap_or("")
                )),
                Some(se) if se.is_invalid_request_exception() => SecretError::not_found(format!(
                    "secret `{}` in {region} cannot be read: {}",
                    r.path,
                    se.message().unwrap_or("")
                )),
                _ => explain(&e, "secretsmanager:GetSecretValue", &region, &format!("secret `{}`", r.path)),
            }
        })?;
        self.value(
            &r.path,
            &Reply {
                string: out.secret_string(),
                binary: out.secret_binary(),
                version_id: out.version_id(),
                stages: out.version_stages(),
                created: out.created_date(),
            },
        )
    }

    /// Batched reads, 20 ids a call, the calls in parallel. `Err` only when the policy refuses
    /// the batch call itself, so that the caller falls back. A throttled batch call (its quota,
    /// 100 calls/s per account, is the first a fleet meets) is not retried: its ids come back in
    /// `.1`, to be read one by one (`GetSecretValue`: 10,000 calls/s).
    async fn batch(
        &self,
        client: &Client,
        requests: &[Request],
        indices: &[usize],
    ) -> Result<Batched, BatchRefused> {
        let calls: Vec<_> = indices
            .chunks(BATCH)
            .map(|chunk| async move {
                let ids: Vec<String> = chunk.iter().map(|&i| requests[i].path.clone()).collect();
                let call = client
                    .batch_get_secret_value()
                    .set_secret_id_list(Some(ids));
                let out = match self.throttled_batch {
                    ThrottledBatch::Retry => super::while_throttled(|| call.clone().send()).await,
                    ThrottledBatch::SingleReads => {
                        call.customize()
                            .config_override(
                                aws_sdk_secretsmanager::config::Config::builder().retry_config(
                                    aws_smithy_types::retry::RetryConfig::standard()
                                        .with_max_attempts(1),
                                ),
                            )
                            .send()
                            .await
                    }
                };
                (chunk, out)
            })
            .collect();
        let answers: Vec<_> = futures_util::stream::iter(calls)
            .buffer_unordered(self.parallel)
            .collect()
            .await;
        let region = self.sdk.region();
        let mut results = Vec::new();
        let mut throttled = Vec::new();
        for (chunk, out) in answers {
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    if super::is_denied(&e) {
                        return Err(BatchRefused(e.to_string()));
                    }
                    // Not retried here (one attempt): a throttled call, and one that did not get
                    // through, are read one by one, with the SDK's retries.
                    if super::is_throttled(&e)
                        || matches!(
                            e,
                            aws_smithy_runtime_api::client::result::SdkError::DispatchFailure(_)
                                | aws_smithy_runtime_api::client::result::SdkError::TimeoutError(_)
                                | aws_smithy_runtime_api::client::result::SdkError::ResponseError(
                                    _
                                )
                        )
                    {
                        throttled.extend_from_slice(chunk);
                        continue;
                    }
                    let err = explain(
                        &e,
                        "secretsmanager:BatchGetSecretValue",
                        &region,
                        "a batch of secrets",
                    );
                    results.extend(chunk.iter().map(|&i| (i, Err(err.clone()))));
                    continue;
                }
            };
            for &i in chunk {
                let id = requests[i].path.as_str();
                let entry = out.secret_values().iter().find(|v| {
                    v.name() == Some(id)
                        || v.arn() == Some(id)
                        || v.arn()
                            .is_some_and(|a| a.starts_with(id) && id.starts_with("arn:"))
                });
                let result = match entry {
                    Some(v) => self.value(
                        id,
                        &Reply {
                            string: v.secret_string(),
                            binary: v.secret_binary(),
                            version_id: v.version_id(),
                            stages: v.version_stages(),
                            created: v.created_date(),
                        },
                    ),
                    None => {
                        let error = out.errors().iter().find(|e| e.secret_id() == Some(id));
                        match error.and_then(|e| e.error_code()) {
                            Some("AccessDeniedException") => Err(SecretError::denied(format!(
                                "access denied to secret `{id}` in {region}: the IAM policy needs `secretsmanager:GetSecretValue` on it"
                            ))),
                            Some("DecryptionFailure") => Err(SecretError::denied(format!(
                                "Secrets Manager cannot decrypt `{id}` with its KMS key: the caller needs `kms:Decrypt` on that key"
                            ))),
                            Some("ResourceNotFoundException") | None => Err(
                                SecretError::not_found(format!("no secret `{id}` in {region}")),
                            ),
                            Some(code) => Err(SecretError::unavailable(format!(
                                "Secrets Manager returned {code} for `{id}`: {}",
                                error.and_then(|e| e.message()).unwrap_or("")
                            ))),
                        }
                    }
                };
                results.push((i, result));
            }
        }
        Ok((results, throttled))
    }

    fn value(&self, id: &str, reply: &Reply<'_>) -> Result<Fetched, SecretError> {
        let value = match (reply.string, reply.binary) {
            (Some(s), _) => SecretString::from(s),
            (None, Some(blob)) => match self.encoding {
                Some(Encoding::Base64) => {
                    let encoded = Zeroizing::new(aws_smithy_types::base64::encode(blob.as_ref()));
                    SecretString::from(encoded.as_str())
                }
                None => value_from_bytes(blob.as_ref().to_vec()).map_err(|e| {
                    SecretError::invalid(format!(
                        "secret `{id}` is binary and {}; set `encoding = \"base64\"` on the backend to pass it on base64-encoded",
                        e.message.trim_start_matches("the value ")
                    ))
                })?,
            },
            (None, None) => {
                return Err(SecretError::invalid(format!(
                    "secret `{id}` has neither a SecretString nor a SecretBinary"
                )));
            }
        };
        let stages = if reply.stages.is_empty() {
            None
        } else {
            Some(format!("stages {}", reply.stages.join(", ")))
        };
        let created = reply.created.and_then(date).map(|d| format!("created {d}"));
        let about = match (stages, created) {
            (Some(s), Some(c)) => Some(format!("{s}, {c}")),
            (s, c) => s.or(c),
        };
        Ok(Fetched {
            version: reply.version_id.map(str::to_owned),
            about,
            ..Fetched::new(value)
        })
    }
}

struct BatchRefused(String);

/// A batch's results, and the requests it left to single reads (throttled).
type Batched = (Vec<(usize, Result<Fetched, SecretError>)>, Vec<usize>);

#[cfg(test)]
mod tests {
    #[test]
    fn a_bad_value_of_a_field_is_named_despite_the_flattened_common_fields() {
        for (field, says) in [
            (
                "throttled_batch = \"never\"",
                "`throttled_batch`: unknown variant",
            ),
            ("retry_mode = 3", "`retry_mode`: invalid type"),
            (
                "max_parallel = 300",
                "`max_parallel = 300` must be between 1 and 256",
            ),
        ] {
            let table: toml::Table = toml::from_str(field).unwrap();
            let err = (super::KIND.parse)(table).err().unwrap();
            assert!(err.0.starts_with(says), "{}", err.0);
        }
    }

    #[test]
    fn version_ids_and_stages() {
        assert!(super::is_version_id("f3927dc1-c71e-4656-bd9e-aa4e7b7d7e97"));
        assert!(!super::is_version_id("AWSPREVIOUS"));
        assert!(!super::is_version_id(
            "f3927dc1c71e4656bd9eaa4e7b7d7e97xxxx"
        ));
    }
}
