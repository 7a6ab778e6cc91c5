//! The top-level error type and the exit code each failure maps to ([`crate::code`]).
//!
//! Every message here names the file, variable, backend or path involved, says what to do, and
//! includes its cause, so that it is printed once and whole; none ever carries a secret value.

use std::fmt;
use std::path::PathBuf;

use crate::code;
use crate::failure::ResolveFailure;

/// One problem found in the manifest, located in its file.
#[derive(Debug, Clone)]
pub struct ConfigProblem {
    pub file: PathBuf,
    /// 1-based line and column; `None` when the problem is about the file as a whole.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem of one manifest, reported together.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "invalid manifest: {one}"),
            many => {
                write!(f, "invalid manifest: {} problems:", many.len())?;
                for p in many {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),

    #[error(
        "no manifest found: looked for {}\n  create one with `secret-run init`, or name it with -f/--manifest or SECRET_RUN_MANIFEST",
        .0.display()
    )]
    NoManifest(PathBuf),

    #[error("cannot read manifest {}: {source}", path.display())]
    ManifestUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    Config(ConfigErrors),

    #[error("{0}")]
    Resolve(ResolveFailure),

    #[error("command not found: `{name}`{hint}")]
    CommandNotFound { name: String, hint: String },

    #[error("cannot execute `{}`: {reason}", path.display())]
    CannotExecute { path: PathBuf, reason: String },

    #[error("{} already exists; pass --force to overwrite it (nothing was written)", .0.display())]
    AlreadyExists(PathBuf),

    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    Init(String),

    /// A backend failed an operator's command (`put`, `migrate`): its kind decides the code.
    #[error("{what}: {error}")]
    Backend {
        what: String,
        error: crate::secret::SecretError,
    },

    /// The cache cannot be read for `cache status` (none yet, another key, corrupt): what a
    /// start during an outage would meet.
    #[error("{0}")]
    Cache(String),

    /// A file to deliver cannot be made from the values (a template, an absent optional value).
    #[error("cannot render {}: {reason}", path.display())]
    Deliver { path: PathBuf, reason: String },

    /// The audit log cannot be opened: nothing is started without the record the manifest asks for.
    #[error("cannot open the audit log {}: {source}; fix the path or its permissions in [audit]", path.display())]
    Audit {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A terminating signal arrived before the command was started.
    #[error("stopped by {0} before the command started; nothing was started")]
    Interrupted(nix::sys::signal::Signal),

    /// stdout (the report, a completion script, the man page) cannot be written.
    #[error("cannot write to standard output: {0}")]
    Output(std::io::Error),

    /// A `listen` socket cannot be had: before any secret is fetched.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        addr: String,
        reason: String,
        #[source]
        source: std::io::Error,
    },

    /// The operating system refused something secret-run needs for itself (a thread, a pipe, a
    /// signal handler): `what` says what it was doing.
    #[error("cannot {what}: {source}")]
    Os {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// A bug in secret-run: a state its own code should never reach.
    #[error("internal error (a bug in secret-run; please report it): {0}")]
    Internal(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => code::USAGE,
            Error::NoManifest(_) | Error::Config(_) | Error::Init(_) => code::CONFIG,
            Error::ManifestUnreadable { source, .. } => {
                if source.kind() == std::io::ErrorKind::PermissionDenied {
                    code::PERMISSION_DENIED
                } else {
                    code::CONFIG
                }
            }
            Error::Resolve(f) => f.exit_code(),
            Error::Cache(_) => code::UNAVAILABLE,
            Error::Backend { error, .. } => error.kind.exit_code(),
            Error::Deliver { .. } => code::SECRET_MISSING,
            Error::CommandNotFound { .. } => code::COMMAND_NOT_FOUND,
            Error::CannotExecute { .. } => code::CANNOT_EXECUTE,
            Error::AlreadyExists(_) | Error::Write { .. } | Error::Audit { .. } => {
                code::CANT_CREATE
            }
            Error::Output(_) => code::IO_ERROR,
            // As if the signal had ended secret-run, which is what the caller asked for.
            Error::Interrupted(sig) => 128u8.saturating_add(*sig as u8),
            Error::Os { .. } | Error::Listen { .. } => code::OS_ERROR,
            Error::Internal(_) => code::SOFTWARE,
        }
    }
}

impl Error {
    /// An OS failure while doing `what` ("start a thread for the reads"), for `map_err`.
    pub fn os<E: Into<std::io::Error>>(what: &'static str) -> impl FnOnce(E) -> Error {
        move |e| Error::Os {
            what,
            source: e.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A setting that cannot be used, in one sentence that names it and says what to write instead.
/// The caller adds where it is (the manifest's file and line, the backend's table).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<String> for Invalid {
    fn from(message: String) -> Self {
        Invalid(message)
    }
}

impl From<&str> for Invalid {
    fn from(message: &str) -> Self {
        Invalid(message.to_owned())
    }
}

/// ` (did you mean `x`?)` when one candidate is close to `word`, else an empty string.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

/// A manifest error's message from the TOML reader, scrubbed of the data it quotes.
pub fn toml_message(e: &toml::de::Error) -> String {
    scrub_deserializer_message(e.message().trim_end())
}

/// A JSON reader's error (a server's reply), scrubbed of the data it quotes.
pub fn json_message(e: &serde_json::Error) -> String {
    scrub_deserializer_message(&e.to_string())
}

/// A deserializer's message (serde_json, toml) without the input it quotes: serde writes the
/// offending data into `invalid type: string "…", expected …`, and that data can be a secret
/// (a Vault reply read with the wrong KV version, a manifest `default`). What was found is
/// reduced to its kind (`a string`, `integer`); what was expected, and the position, stay.
pub fn scrub_deserializer_message(msg: &str) -> String {
    const QUOTING: &[&str] = &["invalid type: ", "invalid value: ", "unknown variant "];
    let Some((start, prefix)) = QUOTING
        .iter()
        .filter_map(|p| msg.find(p).map(|i| (i, *p)))
        .min_by_key(|(i, _)| *i)
    else {
        return msg.to_owned();
    };
    let after = start + prefix.len();
    let head = msg[..after].trim_end();
    // The expectation is written last, by the type being read: the found data, whatever it
    // holds, comes before the last `, expected `.
    match msg[after..].rfind(", expected ") {
        Some(rel) => {
            let found = &msg[after..after + rel];
            let rest = &msg[after + rel..];
            if prefix == "unknown variant " {
                format!("{head}{rest}")
            } else {
                format!("{head} {}{rest}", found_kind(found))
            }
        }
        None => head.trim_end_matches(':').to_owned(),
    }
}

/// `string "x"` → `a string`, ``integer `5` `` → `integer`; a bare kind (`map`) stays.
fn found_kind(found: &str) -> &str {
    if found.starts_with("string ") {
        "a string"
    } else if let Some(i) = found.find(" `") {
        &found[..i]
    } else if found.contains(['"', '`', '\'']) {
        "a value"
    } else {
        found
    }
}

#[cfg(test)]
mod tests {
    use super::scrub_deserializer_message as scrub;

    #[test]
    fn deserializer_messages_lose_the_data_they_quote() {
        assert_eq!(
            scrub(
                "invalid type: string \"hunter2, expected x\", expected struct Metadata at line 1 column 30"
            ),
            "invalid type: a string, expected struct Metadata at line 1 column 30"
        );
        assert_eq!(
            scrub("invalid value: integer `-5`, expected u64"),
            "invalid value: integer, expected u64"
        );
        assert_eq!(
            scrub("unknown variant `s3cr3t`, expected one of `arg`, `stdin`"),
            "unknown variant, expected one of `arg`, `stdin`"
        );
        assert_eq!(
            scrub("invalid type: map, expected a string"),
            "invalid type: map, expected a string"
        );
        assert_eq!(scrub("invalid type: string \"cut"), "invalid type");
        assert_eq!(scrub("missing field `path`"), "missing field `path`");
    }
}
