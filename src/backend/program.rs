//! Running a provider program (the `command` and `sops` backends): an argv (never a shell), in
//! a process group of its own that is killed whole when the run is abandoned (its timeout, the
//! resolve deadline, a signal to secret-run), its stdout bounded, its stderr drained (the start
//! kept, for the error), and its exit status.

use std::process::Stdio;
use std::time::Duration;

use nix::unistd::Pid;
use secrecy::zeroize::Zeroizing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::secret::SecretError;

/// What of the program's stderr is shown in an error.
const STDERR_SHOWN: usize = 2000;
/// What of a provider's stderr is kept (the rest is read and dropped).
const MAX_STDERR: usize = 64 * 1024;

/// One run of a program.
#[derive(Debug)]
pub struct Program<'a> {
    pub program: &'a str,
    pub args: Vec<String>,
    /// Written to its stdin (then closed); `None`: stdin is /dev/null.
    pub stdin: Option<Vec<u8>>,
    /// Its own limit, besides the resolve deadline.
    pub timeout: Duration,
    /// The most it may print on stdout; more is an error and the program is killed.
    pub max_stdout: usize,
}

/// What a run that ended by itself left.
#[derive(Debug)]
pub struct Ran {
    pub status: std::process::ExitStatus,
    pub stdout: Zeroizing<Vec<u8>>,
    pub stderr: Vec<u8>,
}

impl Ran {
    /// "exited with status 2; its stderr: …", for an error message.
    pub fn failure(&self) -> String {
        let stderr = String::from_utf8_lossy(&self.stderr);
        let shown: String = stderr.trim().chars().take(STDERR_SHOWN).collect();
        format!(
            "{}{}",
            describe_status(self.status),
            if shown.is_empty() {
                " and printed nothing on stderr".to_owned()
            } else {
                format!("; its stderr:\n      {}", shown.replace('\n', "\n      "))
            }
        )
    }
}

/// Runs `p` to its end, or kills it (and its group) at its timeout or `deadline`.
pub async fn run(p: &Program<'_>, deadline: Instant) -> Result<Ran, SecretError> {
    let program = p.program;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&p.args)
        .stdin(if p.stdin.is_some() {
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
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), p.stdin.as_ref()) {
        // A program that exits without reading its stdin is not an error here; its exit status says.
        let _ = stdin.write_all(input).await;
    }
    let own_limit = Instant::now() + p.timeout;
    let limit = deadline.min(own_limit);
    let output = match tokio::time::timeout_at(limit, collect(&mut child, p.max_stdout)).await {
        Err(_) if limit < own_limit => {
            return Err(SecretError::unavailable(format!(
                "the resolve deadline ran out while `{program}` was running; it was killed"
            )));
        }
        Err(_) => {
            return Err(SecretError::unavailable(format!(
                "`{program}` did not finish within {}; it was killed",
                humantime::format_duration(p.timeout)
            )));
        }
        Ok(Err(Collect::TooLarge)) => {
            return Err(SecretError::invalid(format!(
                "`{program}` printed more than {} bytes on stdout; it was killed",
                p.max_stdout
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
    Ok(output)
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

/// Reads stdout (at most `max_stdout`) and stderr (the first `MAX_STDERR` kept, the rest read
/// and dropped, so that the program is never blocked on a full pipe), then waits for the exit.
async fn collect(child: &mut tokio::process::Child, max_stdout: usize) -> Result<Ran, Collect> {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out = async {
        let mut buf = Zeroizing::new(Vec::new());
        if let Some(s) = stdout {
            s.take(max_stdout as u64 + 1)
                .read_to_end(&mut buf)
                .await
                .map_err(Collect::Io)?;
        }
        if buf.len() > max_stdout {
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
    Ok(Ran {
        status,
        stdout: out,
        stderr: err,
    })
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "failed".to_owned(),
    }
}
