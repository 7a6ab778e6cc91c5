//! The `aws-ssm` backend: SSM Parameter Store.
//!
//! ```toml
//! [backends.params]
//! kind = "aws-ssm"
//! region = "us-east-1"
//! prefix = "/trading/{env}/"        # the parameter name is prefix + path
//!
//! [secrets]
//! REDIS_PASSWORD = { backend = "params", path = "redis/password" }              # SecureString, decrypted
//! OLD_PASSWORD   = { backend = "params", path = "redis/password", version = 3 }  # name:3
//! FEATURES       = { backend = "params", path = "features", version = "stable" } # a label
//! ```
//!
//! Parameters are read with `GetParameters`, 10 names a call, with decryption. `String`,
//! `SecureString` and `StringList` (its comma-separated text, as stored) are all values.

use std::collections::HashMap;

use aws_sdk_ssm::Client;
use futures_util::StreamExt;
use secrecy::SecretString;
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
use crate::secret::SecretError;

/// `GetParameters` takes at most 10 names.
const BATCH: usize = 10;
const DEFAULT_PARALLEL: usize = 8;

pub const KIND: Kind = Kind {
    name: "aws-ssm",
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
}

#[derive(Debug)]
pub struct Ssm {
    sdk: Sdk,
    client: OnceCell<Client>,
    /// The version and value read last for each unpinned parameter: a re-read (`watch`, a
    /// restart) asks `DescribeParameters` (no values) for the versions, 50 names a call, and
    /// reads values only for the parameters whose version moved.
    seen: crate::backend::Seen<i64>,
    parallel: usize,
}

/// `name`, `name:3` or `name:label`, as GetParameters takes them.
fn selector(r: &Request) -> String {
    match &r.version {
        Some(v) => format!("{}:{v}", r.path),
        None => r.path.clone(),
    }
}

/// Groups reads into GetParameters calls. A reply names parameters without the selector asked
/// for, so one call never asks for the same name twice: versions of one name go to different
/// calls. Names with the most versions are placed first, which keeps the number of calls at
/// its minimum (the larger of ⌈reads / 10⌉ and the most versions of one name).
fn plan_calls(requests: &[Request]) -> Vec<Vec<usize>> {
    let mut by_name: Vec<Vec<usize>> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        match by_name.iter_mut().find(|g| requests[g[0]].path == r.path) {
            Some(g) => g.push(i),
            None => by_name.push(vec![i]),
        }
    }
    by_name.sort_by_key(|g| std::cmp::Reverse(g.len()));
    let most = by_name.first().map_or(0, Vec::len);
    let mut calls: Vec<Vec<usize>> = vec![Vec::new(); most.max(requests.len().div_ceil(BATCH))];
    for group in by_name {
        let mut used = Vec::new();
        for i in group {
            // The emptiest call this name is not in yet.
            let slot = (0..calls.len())
                .filter(|c| !used.contains(c) && calls[*c].len() < BATCH)
                .min_by_key(|c| calls[*c].len());
            let c = slot.unwrap_or_else(|| {
                calls.push(Vec::new());
                calls.len() - 1
            });
            calls[c].push(i);
            used.push(c);
        }
    }
    calls.retain(|c| !c.is_empty());
    calls
}

impl super::super::Config for Config {
    fn check_version(&self, version: &str) -> Option<Result<(), Invalid>> {
        Some(super::check_version(version))
    }

    fn build(&self, _ctx: &Context) -> Result<Arc<dyn Backend>, Invalid> {
        Ok(Arc::new(Ssm::new(self)))
    }
}

impl Backend for Ssm {
    fn reader(&self) -> Reader<'_> {
        Reader::Remote(self)
    }

    fn writer(&self) -> Option<&dyn crate::backend::WriteValue> {
        Some(self)
    }

    fn calls(&self) -> Option<crate::backend::Calls> {
        Some(self.sdk.counts())
    }

    fn refresh(&self) {
        self.seen.forget();
    }
}

impl RemoteRead for Ssm {
    fn fetch<'a>(
        &'a self,
        requests: &'a [Request],
        deadline: Instant,
    ) -> BoxFuture<'a, FetchResult> {
        Box::pin(super::within(
            deadline,
            "AWS Parameter Store did not answer before the resolve deadline (--timeout)",
            self.fetch_all(requests),
        ))
    }
}

impl Ssm {
    fn new(config: &Config) -> Self {
        Ssm {
            sdk: Sdk::new(config.common.clone()),
            client: OnceCell::new(),
            seen: crate::backend::Seen::default(),
            parallel: config.common.max_parallel.unwrap_or(DEFAULT_PARALLEL),
        }
    }

    /// The region calls go to, for messages.
    pub(super) fn region(&self) -> String {
        self.sdk.region()
    }

    pub(super) async fn client(&self) -> Result<&Client, SecretError> {
        self.client
            .get_or_try_init(|| async {
                let sdk = self.sdk.config().await?;
                let config = aws_sdk_ssm::config::Builder::from(sdk)
                    .interceptor(self.sdk.counter())
                    .build();
                Ok(Client::from_conf(config))
            })
            .await
    }

    /// The parameters read before whose version did not move, with their values.
    async fn unchanged(&self, client: &Client, requests: &[Request]) -> HashMap<usize, Fetched> {
        use aws_sdk_ssm::types::ParameterStringFilter;
        let known: Vec<(usize, String, i64)> = requests
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.seen.version(r).map(|v| (i, r.path.clone(), v)))
            .collect();
        let mut kept = HashMap::new();
        for chunk in known.chunks(50) {
            let names: Vec<String> = chunk.iter().map(|(_, n, _)| n.clone()).collect();
            let Ok(filter) = ParameterStringFilter::builder()
                .key("Name")
                .option("Equals")
                .set_values(Some(names))
                .build()
            else {
                continue;
            };
            let Ok(out) = client
                .describe_parameters()
                .parameter_filters(filter)
                .max_results(50)
                .send()
                .await
            else {
                continue;
            };
            for (i, name, version) in chunk {
                let current = out
                    .parameters()
                    .iter()
                    .find(|p| p.name() == Some(name.as_str()))
                    .map(|p| p.version());
                if current == Some(*version) {
                    if let Some(f) = self.seen.unchanged(&requests[*i], version) {
                        tracing::trace!(parameter = %name, "unchanged; its value is not read again");
                        kept.insert(*i, f);
                    }
                } else {
                    tracing::debug!(parameter = %name, "a new version; reading it");
                }
            }
        }
        kept
    }

    async fn fetch_all(&self, requests: &[Request]) -> FetchResult {
        let client = self.client().await?;
        let kept = self.unchanged(client, requests).await;
        let wanted: Vec<usize> = (0..requests.len())
            .filter(|i| !kept.contains_key(i))
            .collect();
        let subset: Vec<Request> = wanted.iter().map(|&i| requests[i].clone()).collect();
        let mut results: HashMap<usize, Result<Fetched, SecretError>> = self
            .read_all(client, &subset)
            .await
            .into_iter()
            .map(|(j, r)| (wanted[j], r))
            .collect();
        for (i, r) in &results {
            if let Ok(f) = r {
                if let Some(v) = f.version.as_deref().and_then(|v| v.parse().ok()) {
                    self.seen.remember(&requests[*i], v, f);
                }
            }
        }
        results.extend(kept.into_iter().map(|(i, f)| (i, Ok(f))));
        tracing::debug!(
            calls = self.sdk.calls(),
            parameters = requests.len(),
            "Parameter Store reads done"
        );
        crate::backend::in_order(results, requests.len())
    }

    /// Reads every request's value, `GetParameters` 10 names a call.
    async fn read_all(
        &self,
        client: &Client,
        requests: &[Request],
    ) -> HashMap<usize, Result<Fetched, SecretError>> {
        let calls = plan_calls(requests);
        let work: Vec<_> = calls
            .into_iter()
            .map(|chunk| async move { self.get_parameters(client, requests, chunk).await })
            .collect();
        let answers: Vec<_> = futures_util::stream::iter(work)
            .buffer_unordered(self.parallel)
            .collect()
            .await;
        answers.into_iter().flatten().collect()
    }

    async fn get_parameters(
        &self,
        client: &Client,
        requests: &[Request],
        chunk: Vec<usize>,
    ) -> Vec<(usize, Result<Fetched, SecretError>)> {
        let names: Vec<String> = chunk.iter().map(|&i| selector(&requests[i])).collect();
        let region = self.sdk.region();
        let call = client
            .get_parameters()
            .set_names(Some(names.clone()))
            .with_decryption(true);
        let out = match super::while_throttled(|| call.clone().send()).await {
            Ok(out) => out,
            Err(e) => {
                let err = match e.as_service_error() {
                    Some(se) if se.is_invalid_key_id() => SecretError::denied(format!(
                        "SSM cannot decrypt a SecureString among {}: its KMS key is not usable; the caller needs `kms:Decrypt` on it",
                        names.join(", ")
                    )),
                    _ => explain(
                        &e,
                        "ssm:GetParameters",
                        &region,
                        &format!("parameters {}", names.join(", ")),
                    ),
                };
                return chunk.into_iter().map(|i| (i, Err(err.clone()))).collect();
            }
        };
        chunk
            .into_iter()
            .zip(names)
            .map(|(i, name)| {
                let r = &requests[i];
                let found = out
                    .parameters()
                    .iter()
                    .find(|p| p.name() == Some(r.path.as_str()));
                let result = match found {
                    Some(p) => match p.value() {
                        Some(v) => Ok(Fetched {
                            version: Some(p.version().to_string()),
                            about: {
                                let kind = p.r#type().map(|t| t.as_str().to_owned());
                                let modified = p.last_modified_date().and_then(date);
                                match (kind, modified) {
                                    (Some(k), Some(m)) => Some(format!("{k}, modified {m}")),
                                    (k, m) => k.or(m.map(|m| format!("modified {m}"))),
                                }
                            },
                            ..Fetched::new(SecretString::from(v))
                        }),
                        None => Err(SecretError::invalid(format!(
                            "parameter `{name}` has no value"
                        ))),
                    },
                    None => Err(SecretError::not_found(format!(
                        "no parameter `{name}` in {region}{}",
                        if out.invalid_parameters().contains(&name) {
                            ""
                        } else {
                            " (not in the reply)"
                        }
                    ))),
                };
                (i, result)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, version: Option<&str>) -> Request {
        Request {
            path: path.into(),
            version: version.map(Into::into),
            params: None,
        }
    }

    #[test]
    fn calls_hold_ten_names_at_most_and_never_one_name_twice() {
        let mut requests: Vec<Request> = (0..14).map(|i| req(&format!("/p{i}"), None)).collect();
        requests.push(req("/r", None));
        requests.push(req("/r", Some("1")));
        requests.push(req("/r", Some("stable")));
        let calls = plan_calls(&requests);
        assert_eq!(calls.len(), 3, "{calls:?}");
        let mut seen: Vec<usize> = calls.concat();
        seen.sort_unstable();
        assert_eq!(seen, (0..requests.len()).collect::<Vec<_>>());
        for c in &calls {
            assert!(c.len() <= BATCH);
            let names: std::collections::BTreeSet<&str> =
                c.iter().map(|&i| requests[i].path.as_str()).collect();
            assert_eq!(names.len(), c.len(), "a name twice in {c:?}");
        }
        assert_eq!(plan_calls(&requests[..3]).len(), 1);
        assert!(plan_calls(&[]).is_empty());
    }
}
