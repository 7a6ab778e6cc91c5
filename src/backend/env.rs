//! The `env` backend: secret-run's own process environment.
//!
//! ```toml
//! # Built in: usable as `backend = "env"` (or SECRET_BACKEND=env) without this table.
//! [backends.env]
//! kind = "env"
//! prefix = "{env}/"   # optional: `prod/database/url` -> PROD_DATABASE_URL
//! ```
//!
//! A path names a variable as it is (`http_proxy`), or by the built-in rule:
//! `database/url` -> `DATABASE_URL`.

use std::os::unix::ffi::OsStringExt;

use serde::Deserialize;

use super::{Fetched, Request};
use crate::secret::{SecretError, path_to_var, value_from_bytes};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

#[derive(Debug)]
pub struct EnvBackend;

impl EnvBackend {
    pub fn new(_config: &Config) -> Self {
        EnvBackend
    }

    pub fn fetch(&self, requests: &[Request]) -> Vec<Result<Fetched, SecretError>> {
        requests
            .iter()
            .map(|r| {
                let var = path_to_var(&r.path);
                // The path itself first when it names a variable (`http_proxy`), then the rule.
                let found = crate::secret::EnvName::parse(&r.path)
                    .ok()
                    .and_then(|exact| std::env::var_os(exact.as_str()))
                    .or_else(|| std::env::var_os(&var));
                match found {
                    Some(v) => value_from_bytes(v.into_vec()).map(Fetched::new),
                    None => Err(SecretError::not_found(format!(
                        "variable `{var}` is not set in secret-run's environment"
                    ))),
                }
            })
            .collect()
    }
}
