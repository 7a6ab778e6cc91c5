//! A server process for the tests that never outlives them: it runs under a small shell that
//! kills it when its stdin closes, which happens when the test process ends, however it ends.

#![allow(dead_code)] // the servers are used by the vault and aws tests, which a lean build leaves out

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

pub struct Kept {
    shell: Child,
    stdin: Option<ChildStdin>,
}

impl Kept {
    /// Starts `bin args…` with its output in `log`, in an environment of `env` added to ours.
    pub fn spawn<S: AsRef<OsStr>>(
        bin: &Path,
        args: &[S],
        log: &Path,
        env: &[(&str, &OsStr)],
    ) -> Kept {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"bin=$1; log=$2; shift 2; "$bin" "$@" </dev/null >"$log" 2>&1 & p=$!; read _ignored; kill $p; wait $p"#)
            .arg("sh")
            .arg(bin)
            .arg(log)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut shell = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let stdin = shell.stdin.take();
        Kept { shell, stdin }
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.shell.try_wait(), Ok(Some(_)))
    }

    /// Stops the server and waits until it is gone.
    pub fn stop(&mut self) {
        drop(self.stdin.take());
        let _ = self.shell.wait();
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port that is free, with the next one free too (the OpenBao dev server's cluster port).
pub fn free_port_pair() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        if port < 65000 && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// A raw HTTP/1.0 request on loopback; the status code, if any answer came.
pub fn http_status(port: u16, method: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// A program of the test servers' virtual environment (.venv/bin, or beside $SECRET_RUN_TEST_BAO).
pub fn venv_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("SECRET_RUN_TEST_BAO")
        .map(PathBuf::from)
        .and_then(|b| b.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin"));
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is not installed: run scripts/install-test-servers (scripts/test does)",
        bin.display()
    );
    bin
}
