//! The `dotenv` backend: a `.env` file, parsed by dotenvy (quoting, escapes, `export`, `${VAR}`).
//!
//! ```toml
//! # Built in: usable as `backend = "dotenv"` (or SECRET_BACKEND=dotenv) without this table;
//! # the built-in one reads `.env` beside the manifest.
//! [backends.local]
//! kind = "dotenv"
//! path = "config/dev.env"   # relative to the manifest's directory; default ".env"
//! ```
//!
//! A path maps to a key by the built-in rule: `database/url` -> `DATABASE_URL`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use secrecy::zeroize::{Zeroize, Zeroizing};
use serde::Deserialize;

use super::{Context, FetchResult, Fetched, Request};
use crate::secret::{SecretError, path_to_var};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub path: Option<PathBuf>,
}

#[derive(Debug)]
pub struct DotenvBackend {
    path: PathBuf,
}

impl DotenvBackend {
    pub fn new(config: &Config, ctx: &Context) -> Self {
        let path = config.path.clone().unwrap_or_else(|| PathBuf::from(".env"));
        DotenvBackend {
            path: ctx.base_dir.join(path),
        }
    }

    /// A FIFO or a device can block a read forever; a missing file fails at once.
    pub fn may_block(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| !m.is_file())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fetch(&self, requests: &[Request]) -> FetchResult {
        let values = self.read()?;
        Ok(requests
            .iter()
            .map(|r| {
                let key = path_to_var(&r.path);
                values.get(&key).cloned().map(Fetched::new).ok_or_else(|| {
                    SecretError::not_found(format!(
                        "`{key}` is not defined in {}",
                        self.path.display()
                    ))
                })
            })
            .collect())
    }

    /// Reads the whole file once; later definitions of a key win, as in a shell.
    fn read(&self) -> Result<HashMap<String, SecretString>, SecretError> {
        Ok(self.read_ordered()?.into_iter().collect())
    }

    /// Every definition in file order (a key defined twice appears twice).
    pub fn read_ordered(&self) -> Result<Vec<(String, SecretString)>, SecretError> {
        let shown = self.path.display();
        let bytes = Zeroizing::new(std::fs::read(&self.path).map_err(|e| {
            let mut err = SecretError::from_io(&format!(".env file {shown}"), &e);
            if e.kind() == std::io::ErrorKind::NotFound {
                err.message.push_str(
                    "; create it (see .env.template), or choose another backend with SECRET_BACKEND",
                );
            }
            err
        })?);
        let mut values = Vec::new();
        for item in dotenvy::from_read_iter(bytes.as_slice()) {
            match item {
                Ok((key, mut value)) => {
                    values.push((key, SecretString::from(value.as_str())));
                    value.zeroize();
                }
                Err(dotenvy::Error::LineParse(mut line, _)) => {
                    // The offending line may hold a value: say where it is, never what it is.
                    let message = format!(
                        "cannot parse {shown}{}: check the quoting and the `KEY=value` form on that line (its text is not shown: it may hold a secret)",
                        line_of(&bytes, &line)
                            .map(|n| format!(" at line {n}"))
                            .unwrap_or_default()
                    );
                    line.zeroize();
                    return Err(SecretError::invalid(message));
                }
                Err(dotenvy::Error::Io(e)) => {
                    return Err(SecretError::invalid(format!(
                        "cannot read {shown}: {}",
                        if e.kind() == std::io::ErrorKind::InvalidData {
                            "it is not valid UTF-8".to_owned()
                        } else {
                            e.kind().to_string()
                        }
                    )));
                }
                Err(e) => {
                    return Err(SecretError::invalid(format!(
                        "cannot parse {shown}: {}",
                        match e {
                            dotenvy::Error::EnvVar(_) => "a variable substitution failed",
                            _ => "unexpected content",
                        }
                    )));
                }
            }
        }
        Ok(values)
    }
}

/// The 1-based line on which dotenvy's failing (possibly multi-line) text starts.
fn line_of(file: &[u8], text: &str) -> Option<usize> {
    let text = text.trim_start();
    let first = text.lines().next().filter(|l| !l.is_empty())?;
    let file = std::str::from_utf8(file).ok()?;
    file.lines()
        .position(|l| l.trim_start() == first.trim_start() || l.contains(first))
        .map(|i| i + 1)
}
