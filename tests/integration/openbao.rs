//! A real OpenBao dev server for the tests: one shared by the whole run (tests make their own
//! paths, mounts and policies in it), and private ones for tests that seal or kill theirs.
//!

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::kept::{Kept, free_port_pair, http_status, venv_bin};
use crate::support::poll_until;
use std::sync::OnceLock;
use std::time::Duration;

pub const ROOT_TOKEN: &str = "root";

pub struct Bao {
    pub addr: String,
    pub port: u16,
    pub home: tempfile::TempDir,
    keeper: Kept,
}

pub fn bao_bin() -> PathBuf {
    venv_bin("bao")
}

/// The server shared by every test of this run.
pub fn shared() -> &'static Bao {
    static SHARED: OnceLock<Bao> = OnceLock::new();
    SHARED.get_or_init(|| Bao::start(&[]))
}

impl Bao {
    /// Starts a dev server (root token `root`), with extra arguments, and waits until it answers.
    pub fn start(extra: &[&str]) -> Bao {
        let bin = bao_bin();
        for _ in 0..5 {
            let port = free_port_pair();
            let home = tempfile::tempdir().expect("tempdir");
            let mut args = vec![
                "server".to_owned(),
                "-dev".to_owned(),
                format!("-dev-root-token-id={ROOT_TOKEN}"),
                format!("-dev-listen-address=127.0.0.1:{port}"),
            ];
            args.extend(extra.iter().map(|s| (*s).to_owned()));
            if extra.contains(&"-dev-tls") {
                let dir = home.path().join("tls");
                std::fs::create_dir_all(&dir).expect("tls dir");
                args.push(format!("-dev-tls-cert-dir={}", dir.display()));
            }
            let log = home.path().join("server.log");
            let keeper = Kept::spawn(&bin, &args, &log, &[("HOME", home.path().as_os_str())]);
            let scheme = if extra.iter().any(|a| a.starts_with("-dev-tls")) {
                "https"
            } else {
                "http"
            };
            let mut bao = Bao {
                addr: format!("{scheme}://127.0.0.1:{port}"),
                port,
                home,
                keeper,
            };
            if bao.wait_ready() {
                return bao;
            }
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            eprintln!("OpenBao did not start on port {port}; trying another. Its log:\n{log}");
            bao.stop();
        }
        panic!("OpenBao did not start after 5 attempts");
    }

    fn wait_ready(&mut self) -> bool {
        let mut ready = false;
        poll_until(Duration::from_secs(20), || {
            if self.keeper.exited() {
                return true;
            }
            ready = if self.addr.starts_with("https") {
                // No TLS client here: the CLI checks for us once the port accepts connections.
                TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                    && self.bao(&["status"]).status.code() == Some(0)
            } else {
                http_status(self.port, "GET", "/v1/sys/health") == Some(200)
            };
            ready
        });
        ready && !self.keeper.exited()
    }

    pub fn stop(&mut self) {
        self.keeper.stop();
    }

    /// The `bao` CLI against this server, as root.
    pub fn bao(&self, args: &[&str]) -> Output {
        self.bao_env(args, &[])
    }

    pub fn bao_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(bao_bin());
        cmd.args(args)
            .env("VAULT_ADDR", &self.addr)
            .env("VAULT_TOKEN", ROOT_TOKEN)
            .env("HOME", self.home.path())
            .env_remove("VAULT_NAMESPACE")
            .stdin(Stdio::null());
        if self.addr.starts_with("https") {
            cmd.env("VAULT_CACERT", self.ca_cert());
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run bao")
    }

    /// The CA of a `-dev-tls` server (its certificate directory is the server's HOME/tls).
    pub fn ca_cert(&self) -> PathBuf {
        self.home.path().join("tls/vault-ca.pem")
    }

    /// Runs the CLI and fails the test when it fails.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_env(args, &[])
    }

    #[track_caller]
    pub fn ok_env(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.bao_env(args, env);
        assert!(
            out.status.success(),
            "bao {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes a policy from HCL.
    #[track_caller]
    pub fn policy(&self, name: &str, hcl: &str) {
        let file = self.home.path().join(format!("{name}.hcl"));
        std::fs::write(&file, hcl).expect("policy file");
        self.ok(&["policy", "write", name, file.to_str().expect("utf-8 path")]);
    }
}
