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
//! The program runs once per distinct path, several at a time. Its stdout is the value (one
//! trailing newline stripped); with `key` it must print a JSON object. A non-zero exit is an error
//! that shows the program's stderr.

use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use secrecy::zeroize::Zeroizing;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::{Fetched, Request};
use crate::secret::{SecretError, strip_one_newline, value_from_bytes};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Enough to overlap slow providers without starting a process storm.
const CONCURRENCY: usize = 8;
/// What of the program's stderr is shown in an error.
const STDERR_SHOWN: usize = 2000;

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
    pub fn validate(&self) -> Result<(), String> {
        match self.argv.first() {
            None => Err("`argv` cannot be empty: name the program and its arguments, e.g. [\"op\", \"read\"]".into()),
            Some(p) if p.trim().is_empty() => Err("`argv[0]` (the program) cannot be empty".into()),
            Some(_) => Ok(()),
        }
    }
}

#[derive(Debug)]
pub struct CommandBackend {
    argv: Vec<String>,
    input: Input,
    timeout: Duration,
}

impl CommandBackend {
    pub fn new(config: &Config) -> Self {
        CommandBackend {
            argv: config.argv.clone(),
            input: config.input,
            timeout: config.timeout.unwrap_or(DEFAULT_TIMEOUT),
        }
    }

    pub fn program(&self) -> &str {
        self.argv.first().map_or("", String::as_str)
    }

    pub async fn fetch(
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
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(self.args_for(path))
            .stdin(if self.input == Input::Stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Dropping the future on timeout drops the child, which kills it.
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            SecretError::unavailable(format!(
                "cannot start `{program}`: {e}{}",
                if e.kind() == std::io::ErrorKind::NotFound {
                    " (is it installed and on PATH?)"
                } else {
                    ""
                }
            ))
        })?;
        if let Some(mut stdin) = child.stdin.take() {
            // A program that exits without reading its stdin is not an error here; its exit status says.
            let _ = stdin.write_all(format!("{path}\n").as_bytes()).await;
        }
        let own_limit = Instant::now() + self.timeout;
        let limit = deadline.min(own_limit);
        let output = match tokio::time::timeout_at(limit, child.wait_with_output()).await {
            Err(_) if limit < own_limit => {
                return Err(SecretError::unavailable(format!(
                    "the resolve deadline ran out while `{program}` was running; it was killed"
                )));
            }
            Err(_) => {
                return Err(SecretError::unavailable(format!(
                    "`{program}` did not finish within {}; it was killed",
                    humantime::format_duration(self.timeout)
                )));
            }
            Ok(Err(e)) => return Err(SecretError::unavailable(format!("`{program}` failed: {e}"))),
            Ok(Ok(output)) => output,
        };
        let mut stdout = Zeroizing::new(output.stdout);
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stderr = stderr.trim();
            let shown: String = stderr.chars().take(STDERR_SHOWN).collect();
            return Err(SecretError::unavailable(format!(
                "`{program}` {}{}",
                describe_status(output.status),
                if shown.is_empty() {
                    " and printed nothing on stderr".to_owned()
                } else {
                    format!("; its stderr:\n      {}", shown.replace('\n', "\n      "))
                }
            )));
        }
        let value = strip_one_newline(value_from_bytes(std::mem::take(&mut *stdout))?);
        if secrecy::ExposeSecret::expose_secret(&value).is_empty() {
            return Err(SecretError::invalid(format!(
                "`{program}` printed nothing on stdout"
            )));
        }
        Ok(Fetched::new(value))
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "failed".to_owned(),
    }
}
