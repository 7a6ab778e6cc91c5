//! Helpers: a project directory with a manifest, and a way to run the binary in it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for its (killed) parent's reaper: either way not running.
        if stat.is_empty() || stat.contains(") Z ") {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "process {pid} is still running"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
