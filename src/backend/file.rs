//! The `file` backend: one file per secret under a directory, as Docker (`/run/secrets`),
//! Kubernetes secret volumes and systemd credentials (`$CREDENTIALS_DIRECTORY`) provide them.
//!
//! ```toml
//! [backends.mounted]
//! kind = "file"
//! dir = "/run/secrets"   # relative to the manifest's directory when relative;
//!                        # when omitted, $CREDENTIALS_DIRECTORY (systemd LoadCredential=)
//! ```
//!
//! One trailing newline is stripped. A path that leaves `dir` (`..`, an absolute path, a symlink
//! pointing outside, or an absolute symlink) is refused: Kubernetes' own `..data` symlinks are
//! relative, stay inside and are followed. Only regular files are read.

use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use serde::Deserialize;

use super::{Context, Fetched, Request};
use crate::fsread;
use crate::secret::{MAX_ENV_STRING, SecretError, strip_one_newline, value_from_bytes};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub dir: Option<PathBuf>,
}

#[derive(Debug)]
pub struct FileBackend {
    dir: PathBuf,
}

/// Refuses a path that names something outside the directory by its spelling alone.
pub fn check_relative(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(format!(
            "path `{path}` is absolute; a file backend path is relative to its `dir`"
        ));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!(
            "path `{path}` contains `..`; a file backend path cannot leave its `dir`"
        ));
    }
    Ok(())
}

impl FileBackend {
    pub fn new(config: &Config, ctx: &Context) -> Result<Self, String> {
        let dir = match &config.dir {
            Some(dir) => ctx.base_dir.join(dir),
            None => match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(d) if !d.is_empty() => PathBuf::from(d),
                _ => {
                    return Err("needs `dir` (or $CREDENTIALS_DIRECTORY, which systemd sets for services with LoadCredential=)".into());
                }
            },
        };
        Ok(FileBackend { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn fetch(
        &self,
        requests: &[Request],
        deadline: Instant,
    ) -> Vec<Result<Fetched, SecretError>> {
        requests
            .iter()
            .map(|r| self.read_one(&r.path, deadline))
            .collect()
    }

    /// Opened once, beneath `dir` (a symlink may not lead out of it, even one swapped in while
    /// secret-run runs), then checked by what was opened: a regular file, of a value's size.
    fn read_one(&self, path: &str, deadline: Instant) -> Result<Fetched, SecretError> {
        check_relative(path).map_err(SecretError::denied)?;
        let shown = self.dir.join(path);
        // A value and its final newline (`\r\n`).
        let limit = MAX_ENV_STRING + 2;
        let mut bytes =
            fsread::read_beneath(&self.dir, path, limit, deadline).map_err(|e| match e {
                fsread::ReadError::TooLarge { .. } => too_large(&shown),
                e => e.into_secret_error(&shown.display().to_string()),
            })?;
        let value = value_from_bytes(std::mem::take(&mut *bytes))?;
        let value = strip_one_newline(value);
        if secrecy::ExposeSecret::expose_secret(&value).len() > MAX_ENV_STRING {
            return Err(too_large(&shown));
        }
        Ok(Fetched::new(value))
    }
}

fn too_large(shown: &Path) -> SecretError {
    SecretError::invalid(format!(
        "{} is larger than the {MAX_ENV_STRING} bytes an environment value can hold",
        shown.display()
    ))
}
