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
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;

use super::{
    Backend, Context, FetchResult, Fetched, Kind, LocalRead, Put, Reader, Request, WriteValue,
    Written, check_create_only, typed,
};
use crate::error::Invalid;
use crate::fsread;
use crate::secret::{SecretError, strip_one_newline, value_from_bytes};

pub const KIND: Kind = Kind {
    name: "file",
    builtin: None,
    parse: |table| Ok(Box::new(typed::<Config>(table)?)),
};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub dir: Option<PathBuf>,
}

impl super::Config for Config {
    fn check_path(&self, path: &str) -> Result<(), Invalid> {
        check_relative(path)
    }

    fn build(&self, ctx: &Context) -> Result<Arc<dyn Backend>, Invalid> {
        Ok(Arc::new(FileBackend::new(self, ctx)?))
    }
}

#[derive(Debug)]
pub struct FileBackend {
    dir: PathBuf,
}

/// Refuses a path that names something outside the directory by its spelling alone.
fn check_relative(path: &str) -> Result<(), Invalid> {
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(Invalid(format!(
            "path `{path}` is absolute; a file backend path is relative to its `dir`"
        )));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(Invalid(format!(
            "path `{path}` contains `..`; a file backend path cannot leave its `dir`"
        )));
    }
    Ok(())
}

impl Backend for FileBackend {
    fn reader(&self) -> Reader<'_> {
        Reader::Local(self)
    }

    fn writer(&self) -> Option<&dyn WriteValue> {
        Some(self)
    }
}

/// A new file, or the file replaced whole (mode 0600), inside `dir`; with `key`, one field of
/// the JSON it holds.
impl WriteValue for FileBackend {
    fn put<'a>(
        &'a self,
        put: &'a Put,
        _deadline: tokio::time::Instant,
    ) -> futures_util::future::BoxFuture<'a, Result<Written, SecretError>> {
        Box::pin(async move { self.write(put) })
    }
}

impl LocalRead for FileBackend {
    fn fetch(&self, requests: &[Request], deadline: Instant) -> FetchResult {
        Ok(requests
            .iter()
            .map(|r| self.read_one(&r.path, deadline))
            .collect())
    }
}

impl FileBackend {
    fn write(&self, put: &Put) -> Result<Written, SecretError> {
        use secrecy::ExposeSecret;
        check_relative(&put.path).map_err(|e| SecretError::denied(e.0))?;
        let target = self.dir.join(&put.path);
        let shown = target.display().to_string();
        // The directory the file goes in must be inside `dir`, symlinks resolved.
        let parent = target.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent).map_err(|e| SecretError::from_io(&shown, e))?;
        let inside = std::fs::canonicalize(parent)
            .and_then(|p| Ok(p.starts_with(std::fs::canonicalize(&self.dir)?)))
            .map_err(|e| SecretError::from_io(&shown, e))?;
        if !inside {
            return Err(SecretError::denied(format!(
                "{shown} resolves outside {}: a symlink points out of the directory",
                self.dir.display()
            )));
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let current = match self.read_one(&put.path, deadline) {
            Ok(f) => Some(f.value),
            Err(e) if e.kind == crate::secret::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        check_create_only(put, current.is_some(), &shown)?;
        let text = match &put.key {
            Some(key) => crate::secret::set_field(
                current.as_ref().map(|c| c.expose_secret()),
                key,
                &put.value,
            )?,
            None => secrecy::zeroize::Zeroizing::new(put.value.expose_secret().to_owned()),
        };
        fsread::write_atomically(&target, text.as_bytes(), 0o600)
            .map_err(|e| SecretError::from_io(&shown, e))?;
        Ok(Written { version: None })
    }

    fn new(config: &Config, ctx: &Context) -> Result<Self, Invalid> {
        let dir = match &config.dir {
            Some(dir) => ctx.base_dir.join(dir),
            None => match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(d) if !d.is_empty() => PathBuf::from(d),
                _ => {
                    return Err(Invalid::from(
                        "needs `dir` (or $CREDENTIALS_DIRECTORY, which systemd sets for services with LoadCredential=)",
                    ));
                }
            },
        };
        Ok(FileBackend { dir })
    }

    /// Opened once, beneath `dir` (a symlink may not lead out of it, even one swapped in while
    /// secret-run runs), then checked by what was opened: a regular file, of a value's size.
    fn read_one(&self, path: &str, deadline: Instant) -> Result<Fetched, SecretError> {
        check_relative(path).map_err(|e| SecretError::denied(e.0))?;
        let shown = self.dir.join(path);
        // A value and its final newline (`\r\n`). Larger than an environment string can be:
        // an entry delivered `as_file` may be; the others are checked by the resolver.
        let limit = MAX_FILE_VALUE + 2;
        let mut bytes =
            fsread::read_beneath(&self.dir, path, limit, deadline).map_err(|e| match e {
                fsread::ReadError::TooLarge { .. } => too_large(&shown),
                e => e.into_secret_error(&shown.display().to_string()),
            })?;
        let value = value_from_bytes(std::mem::take(&mut *bytes))?;
        Ok(Fetched::new(strip_one_newline(value)))
    }
}

/// The largest secret file read: a certificate chain with its key is a few tens of KiB.
const MAX_FILE_VALUE: usize = 1 << 20;

fn too_large(shown: &Path) -> SecretError {
    SecretError::invalid(format!(
        "{} is larger than the {} MiB secret-run reads from a secret file",
        shown.display(),
        MAX_FILE_VALUE >> 20
    ))
}
