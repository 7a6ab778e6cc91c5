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

use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use nix::unistd::Pid;
use secrecy::zeroize::Zeroizing;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
/// What of the program's stderr is shown in an error.
const STDERR_SHOWN: usize = 2000;
/// The most a provider may print on stdout: a value, or a JSON object of fields for `key`.
pub const MAX_STDOUT: usize = 1 << 20;
/// What of a provider's stderr is kept (the rest is read and dropped).
const MAX_STDERR: usize = 64 * 1024;

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
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(self.args_for(path))
            .stdin(if self.input == Input::Stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A group of its own: whatever it starts is killed with it (see `Group`), and a
            // terminal's Ctrl-C reaches secret-run, which decides, rather than the provider.
            .process_group(0)
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
        let mut group = Group(child.id().map(|id| Pid::from_raw(id as i32)));
        if let Some(mut stdin) = child.stdin.take() {
            // A program that exits without reading its stdin is not an error here; its exit status says.
            let _ = stdin.write_all(format!("{path}\n").as_bytes()).await;
        }
        let own_limit = Instant::now() + self.timeout;
        let limit = deadline.min(own_limit);
        let output = match tokio::time::timeout_at(limit, collect(&mut child)).await {
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
            Ok(Err(Collect::TooLarge)) => {
                return Err(SecretError::invalid(format!(
                    "`{program}` printed more than {MAX_STDOUT} bytes on stdout; it was killed (a value is at most {} bytes)",
                    crate::secret::MAX_ENV_STRING
                )));
            }
            Ok(Err(Collect::Io(e))) => {
                return Err(SecretError::unavailable(format!("`{program}` failed: {e}")));
            }
            Ok(Ok(output)) => output,
        };
        // It ended by itself: what it left running in the background is its own business
        // (an agent it started, say), not a run to cut short.
        group.0 = None;
        let (status, mut stdout, stderr) = output;
        if !status.success() {
            let stderr = String::from_utf8_lossy(&stderr);
            let stderr = stderr.trim();
            let shown: String = stderr.chars().take(STDERR_SHOWN).collect();
            return Err(SecretError::unavailable(format!(
                "`{program}` {}{}",
                describe_status(status),
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

/// A provider's process group, killed whole when its run is abandoned (timeout, deadline, a
/// signal to secret-run): killing only the program would leave what it started running.
struct Group(Option<Pid>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

enum Collect {
    TooLarge,
    Io(std::io::Error),
}

/// Reads stdout (at most `MAX_STDOUT`) and stderr (the first `MAX_STDERR` kept, the rest read
/// and dropped, so that the program is never blocked on a full pipe), then waits for the exit.
async fn collect(
    child: &mut tokio::process::Child,
) -> Result<(std::process::ExitStatus, Zeroizing<Vec<u8>>, Vec<u8>), Collect> {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out = async {
        let mut buf = Zeroizing::new(Vec::new());
        if let Some(s) = stdout {
            s.take(MAX_STDOUT as u64 + 1)
                .read_to_end(&mut buf)
                .await
                .map_err(Collect::Io)?;
        }
        if buf.len() > MAX_STDOUT {
            return Err(Collect::TooLarge);
        }
        Ok(buf)
    };
    let err = async {
        let mut kept = Vec::new();
        if let Some(mut s) = stderr {
            let mut chunk = [0u8; 8192];
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let room = MAX_STDERR.saturating_sub(kept.len());
                        kept.extend_from_slice(&chunk[..n.min(room)]);
                    }
                }
            }
        }
        Ok(kept)
    };
    let (out, err) = tokio::try_join!(out, err)?;
    let status = child.wait().await.map_err(Collect::Io)?;
    Ok((status, out, err))
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "failed".to_owned(),
    }
}
