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
//! pointing outside) is refused: Kubernetes' own `..data` symlinks stay inside and are followed.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use secrecy::zeroize::Zeroizing;
use serde::Deserialize;

use super::{Context, Fetched, Request};
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

    pub fn fetch(&self, requests: &[Request]) -> Vec<Result<Fetched, SecretError>> {
        let root = match self.dir.canonicalize() {
            Ok(root) => root,
            Err(e) => {
                let err = SecretError::from_io(&format!("directory {}", self.dir.display()), &e);
                return requests.iter().map(|_| Err(err.clone())).collect();
            }
        };
        requests
            .iter()
            .map(|r| self.read_one(&root, &r.path))
            .collect()
    }

    fn read_one(&self, root: &Path, path: &str) -> Result<Fetched, SecretError> {
        check_relative(path).map_err(SecretError::denied)?;
        let shown = self.dir.join(path);
        let real = shown
            .canonicalize()
            .map_err(|e| SecretError::from_io(&format!("{}", shown.display()), &e))?;
        if !real.starts_with(root) {
            return Err(SecretError::denied(format!(
                "refused {}: it resolves outside {} (a symlink points out of the directory)",
                shown.display(),
                self.dir.display()
            )));
        }
        let meta = real
            .metadata()
            .map_err(|e| SecretError::from_io(&format!("{}", shown.display()), &e))?;
        // A FIFO or device would block or never end; only regular files hold secrets.
        if !meta.is_file() {
            return Err(SecretError::invalid(format!(
                "{} is not a regular file",
                shown.display()
            )));
        }
        let mut bytes = Zeroizing::new(Vec::new());
        std::fs::File::open(&real)
            .and_then(|f| f.take(MAX_ENV_STRING as u64 + 2).read_to_end(&mut bytes))
            .map_err(|e| SecretError::from_io(&format!("{}", shown.display()), &e))?;
        if bytes.len() > MAX_ENV_STRING + 1 {
            return Err(SecretError::invalid(format!(
                "{} is larger than the {MAX_ENV_STRING} bytes an environment value can hold",
                shown.display()
            )));
        }
        let value = value_from_bytes(std::mem::take(&mut *bytes))?;
        Ok(Fetched::new(strip_one_newline(value)))
    }
}
