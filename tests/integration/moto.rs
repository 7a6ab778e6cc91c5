//! A real moto server (AWS Secrets Manager and SSM Parameter Store) for the tests: one shared by
//! the run (tests use names of their own), and private ones for tests that need IAM enforced.
//! Test data is written with boto3, from the same virtual environment.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::kept::{Kept, free_port_pair, http_status, venv_bin};
use crate::support::poll_until;

pub struct Moto {
    pub endpoint: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
    keeper: Kept,
}

pub fn shared() -> &'static Moto {
    static SHARED: OnceLock<Moto> = OnceLock::new();
    SHARED.get_or_init(|| Moto::start(&[]))
}

impl Moto {
    pub fn start(env: &[(&str, &str)]) -> Moto {
        let bin = venv_bin("moto_server");
        for _ in 0..5 {
            let port = free_port_pair();
            let dir = tempfile::tempdir().expect("tempdir");
            let log = dir.path().join("moto.log");
            let args = [
                "-H".to_owned(),
                "127.0.0.1".to_owned(),
                "-p".to_owned(),
                port.to_string(),
            ];
            let env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, OsStr::new(*v))).collect();
            let mut keeper = Kept::spawn(&bin, &args, &log, &env);
            let up = poll_until(Duration::from_secs(30), || {
                keeper.exited() || http_status(port, "GET", "/moto-api/") == Some(200)
            });
            if up && !keeper.exited() {
                return Moto {
                    endpoint: format!("http://127.0.0.1:{port}"),
                    port,
                    dir,
                    keeper,
                };
            }
            eprintln!(
                "moto did not start on port {port}; trying another. Its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("moto did not start after 5 attempts");
    }

    /// Stops the server (an outage).
    pub fn stop(&mut self) {
        self.keeper.stop();
    }

    /// Runs Python with boto3 clients `sm` and `ssm` (us-east-1 unless `region` is set in the
    /// code) and the test keys; fails the test when it fails. Returns its stdout.
    #[track_caller]
    pub fn py(&self, code: &str) -> String {
        self.py_as(code, "testing", "testing")
    }

    #[track_caller]
    pub fn py_as(&self, code: &str, key: &str, secret: &str) -> String {
        let prelude = format!(
            "import boto3, json, sys\n\
             def client(service, region='us-east-1'):\n    \
                 return boto3.client(service, endpoint_url='{}', region_name=region, aws_access_key_id='{key}', aws_secret_access_key='{secret}')\n\
             sm = client('secretsmanager')\nssm = client('ssm')\niam = client('iam')\n",
            self.endpoint
        );
        let out = Command::new(venv_bin("python"))
            .arg("-c")
            .arg(format!("{prelude}{code}"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "boto3 script failed:\n{code}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The environment secret-run gets in the tests: test keys, this endpoint, no metadata
    /// service, no config files.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let empty = self.dir.path().join("empty");
        let _ = std::fs::write(&empty, "");
        let empty = empty.display().to_string();
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_CONFIG_FILE", empty.clone()),
            ("AWS_SHARED_CREDENTIALS_FILE", empty),
        ]
    }
}
