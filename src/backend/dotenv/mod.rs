//! The `dotenv` backend: a `.env` file, in docker compose's syntax (see `parse`: quoting,
//! escapes, `export`, `$NAME` / `${NAME:-default}` interpolation, `$$`).
//!
//! ```toml
//! # Built in: usable as `backend = "dotenv"` (or SECRET_BACKEND=dotenv) without this table;
//! # the built-in one reads `.env` beside the manifest.
//! [backends.local]
//! kind = "dotenv"
//! path = "config/dev.env"   # relative to the manifest's directory; default ".env"
//! ```
//!
//! A path names a key of the file as it is (`db_password`), or by the built-in rule:
//! `database/url` -> `DATABASE_URL`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use secrecy::SecretString;
use serde::Deserialize;

use super::{Backend, Context, FetchResult, Fetched, Kind, LocalRead, Reader, Request, typed};
use crate::error::Invalid;
use crate::fsread::{self, Accept};
use crate::secret::{SecretError, path_to_var};

pub mod parse;
mod write;

pub use write::quote;

pub const KIND: Kind = Kind {
    name: "dotenv",
    builtin: Some(|| Box::new(Config::default())),
    parse: |table| Ok(Box::new(typed::<Config>(table)?)),
};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub path: Option<PathBuf>,
}

impl super::Config for Config {
    fn build(&self, ctx: &Context) -> Result<Arc<dyn Backend>, Invalid> {
        Ok(Arc::new(DotenvBackend::new(self, ctx)))
    }
}

#[derive(Debug)]
pub struct DotenvBackend {
    path: PathBuf,
}

impl Backend for DotenvBackend {
    fn reader(&self) -> Reader<'_> {
        Reader::Local(self)
    }

    fn writer(&self) -> Option<&dyn super::WriteValue> {
        Some(self)
    }
}

impl super::WriteValue for DotenvBackend {
    fn put<'a>(
        &'a self,
        put: &'a super::Put,
        _deadline: tokio::time::Instant,
    ) -> futures_util::future::BoxFuture<'a, Result<super::Written, SecretError>> {
        Box::pin(async move { self.write(put) })
    }
}

impl LocalRead for DotenvBackend {
    fn fetch(&self, requests: &[Request], deadline: Instant) -> FetchResult {
        let values = self.read(deadline)?;
        Ok(requests
            .iter()
            .map(|r| {
                let key = path_to_var(&r.path);
                // The path itself first when it is a key of the file (`db_password`, as
                // `init --from-dotenv` writes for a lower-case key), then the built-in rule.
                values
                    .get(r.path.as_str())
                    .or_else(|| values.get(&key))
                    .cloned()
                    .map(Fetched::new)
                    .ok_or_else(|| {
                        SecretError::not_found(format!(
                            "`{key}` is not defined in {}",
                            self.path.display()
                        ))
                    })
            })
            .collect())
    }
}

impl DotenvBackend {
    pub fn new(config: &Config, ctx: &Context) -> Self {
        let path = config.path.clone().unwrap_or_else(|| PathBuf::from(".env"));
        DotenvBackend {
            path: ctx.base_dir.join(path),
        }
    }

    /// Reads the whole file once; later definitions of a key win, as in a shell.
    fn read(&self, deadline: Instant) -> Result<HashMap<String, SecretString>, SecretError> {
        Ok(self.read_ordered(deadline)?.into_iter().collect())
    }

    /// Every definition in file order (a key defined twice appears twice).
    pub fn read_ordered(
        &self,
        deadline: Instant,
    ) -> Result<Vec<(String, SecretString)>, SecretError> {
        let shown = self.path.display();
        let bytes = fsread::read_path(&self.path, Accept::Streams, fsread::MAX_DOTENV, deadline)
            .map_err(|e| {
                let missing = e.io_kind() == Some(std::io::ErrorKind::NotFound);
                let mut err = e.into_secret_error(&format!(".env file {shown}"));
                if missing {
                    err.message.push_str(
                        "; create it (see .env.template), or choose another backend with SECRET_BACKEND",
                    );
                }
                err
            })?;
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            SecretError::invalid(format!(
                "cannot read {shown}: it is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ))
        })?;
        let env = |name: &str| std::env::var(name).ok();
        parse::parse(text, &env).map_err(|e| {
            SecretError::invalid(format!(
                "cannot parse {shown} at line {}: {}",
                e.line, e.message
            ))
        })
    }
}
