//! `secret-run rotate VAR`: a new value as a pending version, the running supervisor reloaded,
//! `--verify` run with the new value, then promoted, or rolled back (and reloaded again). Every
//! step is an audit record; a rotation that fails leaves the old value current.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};

use super::setup::load_plan;
use crate::audit::{Audit, Event};
use crate::backend::Put;
use crate::cli::{GeneratedEncoding, Global};
use crate::error::{Error, Result};
use crate::launch::supervise::status::status_path;

/// How long `rotate` waits for the supervisor's reload by default (plus `restart_spread`).
const DEFAULT_RELOAD_WAIT: Duration = Duration::from_secs(60);

/// How `rotate` runs.
#[derive(Debug)]
pub struct Rotation<'a> {
    pub name: &'a str,
    pub stdin: bool,
    pub generate: Option<usize>,
    pub encoding: GeneratedEncoding,
    pub pidfile: Option<&'a Path>,
    pub pid: Option<i32>,
    pub verify: Option<&'a str>,
    /// `None`: 60 s plus `restart_spread`, which delays the reload by up to that much.
    pub reload_timeout: Option<Duration>,
    pub dry_run: bool,
}

/// The running supervisor to reload: its PID, its status file, its reload signal.
struct Supervisor {
    pid: Pid,
    status: PathBuf,
    signal: Signal,
}

pub fn run(global: &Global, how: &Rotation<'_>) -> Result<u8> {
    let plan = load_plan(global, false)?
        .only(how.name)
        .map_err(Error::Usage)?;
    let Some(var) = plan.vars.iter().find(|v| v.name.as_str() == how.name) else {
        return Err(Error::Usage(format!(
            "`{}` is composed by a template: rotate the entries it uses",
            how.name
        )));
    };
    let handle = plan
        .backends
        .get(&var.backend)
        .ok_or_else(|| Error::Internal("the entry's backend is not built".into()))?;
    let rotation = handle.backend.rotation().ok_or_else(|| {
        Error::Usage(format!(
            "backend `{}` (kind {}) keeps no versions to roll back to: rotate works with vault (KV v2) and aws-secrets-manager; `put` writes other backends",
            var.backend, handle.kind
        ))
    })?;
    let supervisor = supervisor(how, plan.run.pidfile.as_deref(), plan.run.reload_signal);
    let reload_timeout = how
        .reload_timeout
        .unwrap_or(DEFAULT_RELOAD_WAIT + plan.run.restart_spread.unwrap_or_default());
    if how.dry_run {
        let mut steps = vec![format!(
            "write a new value for `{}` as a pending version of `{}` in backend `{}`",
            how.name, var.path, var.backend
        )];
        match &supervisor {
            Ok(Some(s)) => steps.push(format!(
                "send {} to secret-run (PID {}) and wait for its reload",
                s.signal, s.pid
            )),
            Ok(None) => {
                steps.push("no supervisor to reload (no --pidfile, no [run] pidfile)".into())
            }
            Err(e) => steps.push(format!("the supervisor cannot be reloaded: {e}")),
        }
        if let Some(cmd) = how.verify {
            steps.push(format!("run `{cmd}` with the new value"));
        }
        steps.push("promote it; on any failure roll back and reload again".into());
        let text: String = steps
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{}. {s}\n", i + 1))
            .collect();
        super::setup::write_stdout(text.as_bytes())?;
        return Ok(0);
    }
    let supervisor = supervisor?;
    let value = new_value(how)?;
    let mut audit = Audit::open(plan.audit.as_deref(), plan.name.as_deref())?;
    let rt = crate::resolve::runtime()?;
    let deadline = || tokio::time::Instant::now() + global.timeout;
    let put = Put {
        path: var.path.clone(),
        key: var.key.clone(),
        value: value.clone(),
        cas: None,
        create_only: false,
    };
    let backend_error = |what: &str| {
        let what = format!("{what} `{}` in backend `{}`", how.name, var.backend);
        move |error| Error::Backend { what, error }
    };
    let pending = rt
        .block_on(rotation.pending(&put, deadline()))
        .map_err(backend_error("cannot write the new value of"))?;
    let record = |audit: &mut Audit, step: &'static str, outcome: &str| {
        audit.record(Event::Rotate {
            var: how.name.to_owned(),
            step,
            old_version: pending.previous.clone(),
            new_version: Some(pending.new.clone()),
            outcome: outcome.to_owned(),
        });
    };
    record(&mut audit, "pending", "written");
    eprintln!(
        "secret-run: rotate `{}`: new version {} written (pending; the previous is {})",
        how.name,
        pending.new,
        pending.previous.as_deref().unwrap_or("none")
    );
    // Vault: reads get the new version now, so the service reloads onto it before the check.
    let mut failure = None;
    if pending.visible {
        if let Some(s) = &supervisor {
            match s.reload(reload_timeout) {
                Ok(done) => {
                    record(&mut audit, "reload", &done);
                    if !reloaded(&done) {
                        failure = Some(format!("the service's reload ended `{done}`"));
                    }
                }
                Err(e) => {
                    record(&mut audit, "reload", "timed-out");
                    failure = Some(e);
                }
            }
        }
    }
    if failure.is_none() {
        if let Some(cmd) = how.verify {
            let ok = verify(cmd, how.name, &value)?;
            record(&mut audit, "verify", if ok { "passed" } else { "failed" });
            if !ok {
                failure = Some(format!("`{cmd}` failed with the new value"));
            }
        }
    }
    if let Some(why) = failure {
        let rolled = rt.block_on(rotation.roll_back(&pending, deadline()));
        record(
            &mut audit,
            "rollback",
            if rolled.is_ok() { "done" } else { "failed" },
        );
        rolled.map_err(backend_error("cannot roll back"))?;
        if pending.visible {
            if let Some(s) = &supervisor {
                let done = s.reload(reload_timeout).unwrap_or_else(|e| e);
                record(&mut audit, "reload", &done);
            }
        }
        rt.shutdown_background();
        eprintln!(
            "secret-run: rotate `{}`: {why}; rolled back, the previous value is current",
            how.name
        );
        return Ok(1);
    }
    let promoted = rt.block_on(rotation.promote(&pending, deadline()));
    record(
        &mut audit,
        "promote",
        if promoted.is_ok() { "done" } else { "failed" },
    );
    promoted.map_err(backend_error("cannot promote the new value of"))?;
    // Secrets Manager: reads get the new value only now.
    if !pending.visible {
        if let Some(s) = &supervisor {
            let done = s.reload(reload_timeout).unwrap_or_else(|e| e);
            record(&mut audit, "reload", &done);
            if !reloaded(&done) {
                eprintln!(
                    "secret-run: rotate `{}`: promoted, but the service's reload ended: {done}",
                    how.name
                );
            }
        }
    }
    rt.shutdown_background();
    eprintln!(
        "secret-run: rotate `{}`: version {} is current",
        how.name, pending.new
    );
    Ok(0)
}

/// A reload that took the new value (or had nothing to change).
fn reloaded(done: &str) -> bool {
    matches!(done, "applied" | "unchanged")
}

/// The new value: stdin, or random bytes from the OS.
fn new_value(how: &Rotation<'_>) -> Result<SecretString> {
    if let (false, Some(n)) = (how.stdin, how.generate) {
        if !(16..=4096).contains(&n) {
            return Err(Error::Usage(format!(
                "--generate {n}: give between 16 and 4096 bytes"
            )));
        }
        let mut bytes = Zeroizing::new(vec![0u8; n]);
        getrandom::fill(&mut bytes)
            .map_err(|e| Error::Internal(format!("the OS gave no random bytes: {e}")))?;
        let text = match how.encoding {
            GeneratedEncoding::Hex => bytes.iter().map(|b| format!("{b:02x}")).collect(),
            GeneratedEncoding::Base64url => {
                use base64::Engine;
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&*bytes)
            }
        };
        return Ok(SecretString::from(text));
    }
    super::operate::read_new_value(
        std::io::stdin().lock(),
        how.name,
        "pipe it in (`secret-run rotate NAME --stdin < file`), or give --generate N",
    )
}

/// The supervisor named by --pid / --pidfile / `[run] pidfile`, checked: alive, and secret-run.
fn supervisor(
    how: &Rotation<'_>,
    manifest_pidfile: Option<&Path>,
    signal: Signal,
) -> Result<Option<Supervisor>> {
    let Some(pidfile) = how.pidfile.or(manifest_pidfile) else {
        if how.pid.is_some() {
            return Err(Error::Usage(
                "--pid needs the supervisor's status file: give --pidfile, or set `[run] pidfile`"
                    .into(),
            ));
        }
        return Ok(None);
    };
    let pid = match how.pid {
        Some(p) => p,
        None => std::fs::read_to_string(pidfile)
            .map_err(|e| Error::Usage(format!("cannot read the pidfile {}: {e}; is the service running under secret-run with `[run] pidfile`?", pidfile.display())))?
            .trim()
            .parse()
            .map_err(|_| Error::Usage(format!("{} does not hold a PID", pidfile.display())))?,
    };
    let pid = Pid::from_raw(pid);
    if kill(pid, None).is_err() {
        return Err(Error::Usage(format!(
            "process {pid} (from {}) is not running: a stale pidfile?",
            pidfile.display()
        )));
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "secret-run" {
        return Err(Error::Usage(format!(
            "process {pid} is `{}`, not secret-run: the pidfile is not a supervisor's",
            comm.trim()
        )));
    }
    Ok(Some(Supervisor {
        pid,
        status: status_path(pidfile),
        signal,
    }))
}

impl Supervisor {
    fn reloads(&self) -> Option<(u64, String)> {
        let text = std::fs::read_to_string(&self.status).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some((v["reloads"].as_u64()?, v["last"].as_str()?.to_owned()))
    }

    /// Signals a reload and waits until the supervisor reports it done: how it ended.
    fn reload(&self, limit: Duration) -> std::result::Result<String, String> {
        let before = self.reloads().map_or(0, |(n, _)| n);
        kill(self.pid, self.signal)
            .map_err(|e| format!("cannot signal secret-run {}: {e}", self.pid))?;
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Some((n, last)) = self.reloads() {
                if n > before {
                    return Ok(last);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "secret-run {} did not report the reload within {}",
            self.pid,
            humantime::format_duration(limit)
        ))
    }
}

/// Runs `cmd` with the new value in `name`; whether it succeeded.
fn verify(cmd: &str, name: &str, value: &SecretString) -> Result<bool> {
    let status = std::process::Command::new("sh")
        .args(["-c", cmd])
        .env(name, value.expose_secret())
        .status()
        .map_err(Error::os("run the --verify command"))?;
    Ok(status.success())
}
