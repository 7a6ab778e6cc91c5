//! A real PostgreSQL server for a test: initialised in the test's directory, on a free loopback
//! port, as nobody when the tests run as root (PostgreSQL refuses to run as root). Its superuser
//! is `app`, with the password given.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::{Project, poll_until};

/// A PostgreSQL server of its own, on a free port, as nobody when the tests run as root.
pub struct Postgres {
    pub port: u16,
    server: std::process::Child,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.server.id() as i32),
            Signal::SIGINT,
        );
        let _ = self.server.wait();
    }
}

pub fn postgres(p: &Project, password: &str) -> Postgres {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| {
            d.flatten()
                .map(|e| e.path().join("bin"))
                .find(|b| b.join("initdb").exists())
        })
        .expect("PostgreSQL (scripts/install-test-servers installs it)");
    let data = p.path("pg");
    std::fs::create_dir_all(&data).unwrap();
    p.write("pg.pw", password);
    let root = nix::unistd::geteuid().is_root();
    let as_postgres = |program: &Path| {
        let mut c = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(program);
            c
        } else {
            Command::new(program)
        };
        c.current_dir(p.dir.path());
        c
    };
    if root {
        for path in [p.dir.path().to_path_buf(), data.clone(), p.path("pg.pw")] {
            nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        }
        crate::support::set_mode(p.dir.path(), 0o755);
    }
    let init = as_postgres(&bin.join("initdb"))
        .args([
            "-D",
            data.to_str().unwrap(),
            "-U",
            "app",
            "--auth=scram-sha-256",
            "--pwfile=pg.pw",
            "-E",
            "UTF8",
        ])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = as_postgres(&bin.join("postgres"))
        .args([
            "-D",
            data.to_str().unwrap(),
            "-p",
            &port.to_string(),
            "-k",
            data.to_str().unwrap(),
            "-c",
            "listen_addresses=127.0.0.1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pg = Postgres { port, server };
    assert!(
        poll_until(Duration::from_secs(20), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "PostgreSQL did not start"
    );
    pg
}
