//! Every problem of one resolve, as one error: which backends failed as a whole, which variables
//! failed on their own, and the exit code that explains them best. Below the resolver and the
//! top-level error, so that both can name it.

use std::fmt;

use crate::secret::{EnvName, ErrorKind, SecretError};

/// A backend that failed as a whole, and the variables that needed it.
#[derive(Debug)]
pub struct BackendFailure {
    pub backend: String,
    pub error: SecretError,
    pub vars: Vec<EnvName>,
}

#[derive(Debug)]
pub struct VarProblem {
    pub name: EnvName,
    pub backend: String,
    pub path: String,
    pub error: SecretError,
}

/// Every problem of one resolve, for the error message and the exit code.
#[derive(Debug)]
pub struct ResolveFailure {
    pub backends: Vec<BackendFailure>,
    pub vars: Vec<VarProblem>,
}

impl ResolveFailure {
    fn kinds(&self) -> impl Iterator<Item = ErrorKind> + '_ {
        self.backends
            .iter()
            .map(|b| b.error.kind)
            .chain(self.vars.iter().map(|v| v.error.kind))
    }

    /// A bug explains everything; then a backend that cannot even be configured, then an
    /// outage, then a refusal, then missing or invalid values.
    pub fn exit_code(&self) -> u8 {
        let kinds: Vec<ErrorKind> = self.kinds().collect();
        [
            ErrorKind::Internal,
            ErrorKind::Misconfigured,
            ErrorKind::Unavailable,
            ErrorKind::PermissionDenied,
            ErrorKind::NotFound,
            ErrorKind::Invalid,
        ]
        .into_iter()
        .find(|k| kinds.contains(k))
        .unwrap_or(ErrorKind::NotFound)
        .exit_code()
    }
}

impl fmt::Display for ResolveFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.vars.len() + self.backends.iter().map(|b| b.vars.len()).sum::<usize>();
        write!(
            f,
            "cannot resolve {count} secret{}:",
            if count == 1 { "" } else { "s" }
        )?;
        for b in &self.backends {
            let names: Vec<&str> = b.vars.iter().map(EnvName::as_str).collect();
            write!(
                f,
                "\n  backend `{}`: {}\n    needed by {}",
                b.backend,
                b.error,
                names.join(", ")
            )?;
        }
        for v in &self.vars {
            // A composed value has no path: its backend says `template`.
            let path = if v.path.is_empty() {
                String::new()
            } else {
                format!(", path `{}`", v.path)
            };
            write!(
                f,
                "\n  {} (backend `{}`{path}): {}",
                v.name, v.backend, v.error
            )?;
        }
        Ok(())
    }
}
