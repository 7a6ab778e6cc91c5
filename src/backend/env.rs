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
use std::sync::Arc;

use serde::Deserialize;

use super::{Backend, Context, FetchResult, Fetched, Kind, LocalRead, Reader, Request, typed};
use crate::error::Invalid;
use crate::secret::{SecretError, path_to_var, value_from_bytes};

pub const KIND: Kind = Kind {
    name: "env",
    builtin: Some(|| Box::new(Config::default())),
    parse: |table| Ok(Box::new(typed::<Config>(table)?)),
};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

impl super::Config for Config {
    fn build(&self, _ctx: &Context) -> Result<Arc<dyn Backend>, Invalid> {
        Ok(Arc::new(EnvBackend))
    }
}

#[derive(Debug)]
pub struct EnvBackend;

impl Backend for EnvBackend {
    fn reader(&self) -> Reader<'_> {
        Reader::Local(self)
    }
}

impl LocalRead for EnvBackend {
    fn fetch(&self, requests: &[Request], _deadline: std::time::Instant) -> FetchResult {
        Ok(requests
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
            .collect())
    }
}
