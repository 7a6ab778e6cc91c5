//! The `command` backend: an external program as a provider, the plugin mechanism for anything
//! not built in (1Password `op read`, `pass`, `gopass`, a company script).
//!
//! ```toml
//! [backends.op]
//! kind = "command"
//! argv = ["op", "read", "op://Private/{path}"]   # never a shell string; {path} is replaced,
//!                                                # else the path is appended as the last argument
//! input = "arg"      # or "stdin": the path is written to the program's stdin, one line
//! timeout = "30s"    # per run; the program is killed when it is exceeded
//! ```
//!
//! The program runs once per distinct path, several at a time, in a process group of its own
//! (killed whole on timeout). Its stdout is the value (one trailing newline stripped, at most
//! 1 MiB); with `key` it must print a JSON object. A non-zero exit is an error that shows the
//! start of the program's stderr (on the terminal; never in the audit log).

use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use tokio::time::Instant;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{Backend, Context, FetchResult, Fetched, Kind, Reader, RemoteRead, Request, typed};
use crate::error::Invalid;
use crate::secret::{SecretError, strip_one_newline, value_from_bytes};

pub const KIND: Kind = Kind {
    name: "command",
    builtin: None,
    parse: |table| {
        let config = typed::<Config>(table)?;
        config.validate()?;
        Ok(Box::new(config))
    },
};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Enough to overlap slow providers without starting a process storm.
const CONCURRENCY: usize = 8;
/// The most a provider may print on stdout: a value, or a JSON object of fields for `key`.
pub const MAX_STDOUT: usize = 1 << 20;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Input {
    #[default]
    Arg,
    Stdin,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub argv: Vec<String>,
    #[serde(default)]
    pub input: Input,
    #[serde(default, deserialize_with = "crate::duration::de_opt")]
    pub timeout: Option<Duration>,
}

impl Config {
    fn validate(&self) -> Result<(), Invalid> {
        match self.argv.first() {
            None => Err("`argv` cannot be empty: name the program and its arguments, e.g. [\"op\", \"read\"]".into()),
            Some(p) if p.trim().is_empty() => Err("`argv[0]` (the program) cannot be empty".into()),
            Some(_) => Ok(()),
        }
    }
}

impl super::Config for Config {
    fn build(&self, _ctx: &Context) -> Result<Arc<dyn Backend>, Invalid> {
        Ok(Arc::new(CommandBackend::new(self)))
    }
}

#[derive(Debug)]
pub struct CommandBackend {
    argv: Vec<String>,
    input: Input,
    timeout: Duration,
}

impl Backend for CommandBackend {
    fn reader(&self) -> Reader<'_> {
        Reader::Remote(self)
    }
}

impl RemoteRead for CommandBackend {
    fn fetch<'a>(
        &'a self,
        requests: &'a [Request],
        deadline: Instant,
    ) -> BoxFuture<'a, FetchResult> {
        Box::pin(async move { Ok(self.run_all(requests, deadline).await) })
    }
}

impl CommandBackend {
    fn new(config: &Config) -> Self {
        CommandBackend {
            argv: config.argv.clone(),
            input: config.input,
            timeout: config.timeout.unwrap_or(DEFAULT_TIMEOUT),
        }
    }

    pub fn program(&self) -> &str {
        self.argv.first().map_or("", String::as_str)
    }

    async fn run_all(
        &self,
        requests: &[Request],
        deadline: Instant,
    ) -> Vec<Result<Fetched, SecretError>> {
        // Collected first: a closure inside the stream's type trips the compiler's Send check.
        let runs: Vec<_> = requests
            .iter()
            .map(|r| self.run_one(&r.path, deadline))
            .collect();
        futures_util::stream::iter(runs)
            .buffered(CONCURRENCY)
            .collect()
            .await
    }

    fn args_for(&self, path: &str) -> Vec<String> {
        let mut placed = false;
        let mut args: Vec<String> = self.argv[1..]
            .iter()
            .map(|a| {
                placed |= a.contains("{path}");
                a.replace("{path}", path)
            })
            .collect();
        if self.input == Input::Arg && !placed {
            args.push(path.to_owned());
        }
        args
    }

    async fn run_one(&self, path: &str, deadline: Instant) -> Result<Fetched, SecretError> {
        let program = self.program();
        let ran = super::program::run(
            &super::program::Program {
                program,
                args: self.args_for(path),
                stdin: (self.input == Input::Stdin).then(|| format!("{path}\n").into_bytes()),
                timeout: self.timeout,
                max_stdout: MAX_STDOUT,
            },
            deadline,
        )
        .await?;
        if !ran.status.success() {
            return Err(SecretError::unavailable(format!(
                "`{program}` {}",
                ran.failure()
            )));
        }
        let mut stdout = ran.stdout;
        let value = strip_one_newline(value_from_bytes(std::mem::take(&mut *stdout))?);
        if secrecy::ExposeSecret::expose_secret(&value).is_empty() {
            return Err(SecretError::invalid(format!(
                "`{program}` printed nothing on stdout"
            )));
        }
        Ok(Fetched::new(value))
    }
}
