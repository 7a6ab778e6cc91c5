//! Helpers: a project directory with a manifest, ways to run the binary in it (to its end, within
//! a limit, or supervising in the background), and the one bounded polling loop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Distinctive values that must never appear in secret-run's own output.
pub const CANARIES: &[&str] = &[
    "CANARY-dotenv-7f3a9c",
    "CANARY-file-b41e20",
    "CANARY-env-91d0aa",
    "CANARY-cmd-5c77e1",
    "CANARY-json-e0c4d2",
    "CANARY-default-3b9f11",
    "CANARY-vault-pw-41c9",
    "CANARY-vault-api-8e02",
    "CANARY-vault-one-77ad",
    "CANARY-token-5d1f0e",
    "CANARY-secretid-a9b3",
    "CANARY-roleread-c3d4",
    "CANARY-aws-plain-0c1d",
    "CANARY-aws-json-3e4f",
    "CANARY-ssm-v1-7d8e",
    "CANARY-ssm-v2-9f0a",
    "CANARY-session-token-b7c8",
];

pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        Project {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn with_manifest(manifest: &str) -> Project {
        let p = Project::new();
        p.write("secrets.toml", manifest);
        p
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        self.write_bytes(rel, text.as_bytes())
    }

    pub fn write_bytes(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, bytes).expect("write");
        path
    }

    /// A command for the binary, run in the project directory with a clean, known environment.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(bin());
        cmd.current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd().args(args).output().expect("run secret-run"))
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.cmd();
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Run::from(cmd.output().expect("run secret-run"))
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_secret-run")
}

#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn code(&self, expected: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(expected),
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Run {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n--- stderr\n{}",
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn stdout_has(&self, needle: &str) -> &Run {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n--- stdout\n{}",
            self.stdout
        );
        self
    }

    /// Asserts no canary appears in stderr (always secret-run's own) and, unless the child
    /// prints to stdout, in stdout.
    #[track_caller]
    pub fn no_canary(&self, stdout_is_ours: bool) -> &Run {
        for c in CANARIES {
            assert!(
                !self.stderr.contains(c),
                "canary {c} leaked to stderr:\n{}",
                self.stderr
            );
            if stdout_is_ours {
                assert!(
                    !self.stdout.contains(c),
                    "canary {c} leaked to stdout:\n{}",
                    self.stdout
                );
            }
        }
        self
    }
}

/// A field of the certificate a TLS client sees on `port` (`-subject`, `-serial`), as openssl
/// prints it; `None` when the handshake fails.
pub fn served_certificate(port: u16, field: &str) -> Option<String> {
    let out = Command::new("sh")
        .args([
            "-c",
            &format!("openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null | openssl x509 -noout {field}"),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// secret-run with `args`, `env` and `stdin` piped in, run to its end.
pub fn run_with_stdin(p: &Project, args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Run {
    use std::io::Write;
    let mut cmd = p.cmd();
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start secret-run");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin);
    }
    Run::from(child.wait_with_output().expect("wait"))
}

/// Writes an executable script.
pub fn script(p: &Project, rel: &str, body: &str) -> PathBuf {
    let path = p.write(rel, &format!("#!/bin/sh\n{body}\n"));
    set_mode(&path, 0o755);
    path
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Runs `env -0 > env.out` under secret-run and returns the child's environment.
pub fn child_env(
    p: &Project,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::collections::BTreeMap<String, String> {
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--", "sh", "-c", "env -0 > env.out"]);
    p.run_env(&full, env).code(0);
    read_env_dump(&p.path("env.out"))
}

/// Reads the environment a child wrote with `env -0 > FILE`, as a map.
pub fn read_env_dump(path: &Path) -> std::collections::BTreeMap<String, String> {
    let bytes = std::fs::read(path).expect("env dump");
    bytes
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            let s = String::from_utf8_lossy(e);
            s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Waits (bounded) until `pid` has exited, or fails: for "the process was killed" assertions.
#[track_caller]
pub fn assert_gone(pid: i32) {
    wait_until(
        &format!("process {pid} to end"),
        Duration::from_secs(5),
        || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for its (killed) parent's reaper: either way not running.
            stat.is_empty() || stat.contains(") Z ")
        },
    );
}

/// Waits (bounded) until `cond` holds, else fails naming `what`: the one polling loop of the
/// tests. Every wait is bounded, so that a hang fails the test instead of stalling the run.
#[track_caller]
pub fn wait_until(what: &str, limit: Duration, cond: impl FnMut() -> bool) {
    assert!(
        poll_until(limit, cond),
        "timed out after {limit:?} waiting for {what}"
    );
}

/// Polls `cond` every 20 ms until it holds (`true`) or `limit` has passed (`false`).
pub fn poll_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to its end with a limit: a hang is a failure (the process is killed), not a stuck
/// test run.
#[track_caller]
pub fn run_within(mut cmd: Command, limit: Duration) -> Run {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start secret-run");
    let until = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "secret-run hung (killed after {limit:?}); stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Run::from(child.wait_with_output().expect("wait"))
}

/// secret-run supervising a child in the background, its stderr in a file. Dropped while still
/// running, it is stopped (SIGTERM, as a service manager would) and must exit within 10 s;
/// `stop_expecting` also checks the exit code.
pub struct Supervised {
    child: std::process::Child,
    stderr: PathBuf,
    ended: bool,
}

impl Supervised {
    pub fn start(p: &Project, args: &[&str]) -> Supervised {
        Supervised::start_env(p, args, &[])
    }

    pub fn start_env(p: &Project, args: &[&str], env: &[(&str, &str)]) -> Supervised {
        let stderr = p.path("secret-run.err");
        let mut cmd = p.cmd();
        cmd.envs(env.iter().copied());
        cmd.args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        Supervised {
            child: cmd.spawn().expect("start secret-run"),
            stderr,
            ended: false,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("signal secret-run");
    }

    /// Waits for secret-run to exit; its code (128 + N for a signal) and its stderr.
    #[track_caller]
    pub fn wait(mut self, limit: Duration) -> (i32, String) {
        self.ended = true;
        let code = self.wait_code(limit);
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        match code {
            Some(code) => (code, stderr),
            None => panic!("secret-run did not exit within {limit:?}; its stderr:\n{stderr}"),
        }
    }

    /// SIGTERM, then the exit within 10 s with `code`; its stderr.
    #[track_caller]
    pub fn stop_expecting(self, code: i32) -> String {
        self.signal(Signal::SIGTERM);
        let (got, stderr) = self.wait(Duration::from_secs(10));
        assert_eq!(
            got, code,
            "secret-run's exit code after SIGTERM; stderr:\n{stderr}"
        );
        stderr
    }

    fn wait_code(&mut self, limit: Duration) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(
                    status
                        .code()
                        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
                );
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let _ = kill(self.pid(), Signal::SIGTERM);
        let stopped = self.wait_code(Duration::from_secs(10)).is_some();
        // Not while a test is already failing: a second panic would abort the whole run.
        if !std::thread::panicking() {
            assert!(stopped, "secret-run did not stop within 10 s of SIGTERM");
        }
    }
}
