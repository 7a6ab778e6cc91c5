//! The audit log: one JSON object per line, appended to a file created with mode 0600, for every
//! event of a run ([`Event`]: resolve, start, reload, restart, signal, overlap, stale-serve, stop,
//! exit). Records name variables, backends, paths, versions, outcomes and exit codes; never a
//! value, never a hash of one (a short secret's SHA-256 can be brute-forced), and never an error
//! message (a provider's stderr may print the value it failed to deliver).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use serde_json::{Map, Value, json};

use crate::error::Error;
use crate::failure::ResolveFailure;
use crate::resolve::{Outcome, ResolvedVar};

/// Why secret-run resolved: the first start, the reload signal, `watch`, a restart after the
/// child failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Start,
    Signal,
    Watch,
    Restart,
    /// An issued credential neared its end and could not be renewed.
    Lease,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Signal => "signal",
            Trigger::Watch => "watch",
            Trigger::Restart => "restart",
            Trigger::Lease => "lease",
        }
    }
}

/// One variable of a resolve, as the log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarRecord {
    pub var: String,
    pub backend: String,
    pub path: String,
    pub version: Option<String>,
    pub outcome: &'static str,
}

impl VarRecord {
    pub fn all(vars: &[ResolvedVar]) -> Vec<VarRecord> {
        vars.iter()
            .map(|v| VarRecord {
                var: v.name.to_string(),
                backend: v.backend.clone(),
                path: v.path.clone(),
                version: v.version.clone(),
                outcome: match &v.outcome {
                    Outcome::Value(_) => "ok",
                    Outcome::Default(_) => "default",
                    Outcome::Absent => "absent",
                    Outcome::Unissued => "unissued",
                    Outcome::Failed(e) => e.kind.label(),
                },
            })
            .collect()
    }
}

/// Why a resolve could not give the command its values, as the log records it: the exit code
/// it means and each variable that failed with its outcome word. No message text: a provider's
/// stderr or a server's error can carry a value, and the log promises never to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: u8,
    /// Variable, backend, outcome word.
    pub failed: Vec<(String, String, &'static str)>,
}

impl Failure {
    pub fn of(failure: &ResolveFailure) -> Failure {
        let by_backend = failure
            .backends
            .iter()
            .flat_map(|b| b.vars.iter().map(move |name| (name, &b.backend, &b.error)));
        let by_var = failure.vars.iter().map(|v| (&v.name, &v.backend, &v.error));
        Failure {
            code: failure.exit_code(),
            failed: by_backend
                .chain(by_var)
                .map(|(name, backend, error)| {
                    (name.to_string(), backend.clone(), error.kind.label())
                })
                .collect(),
        }
    }

    fn fields(&self) -> Map<String, Value> {
        let failed: Vec<Value> = self
            .failed
            .iter()
            .map(|(var, backend, outcome)| {
                json!({ "var": var, "backend": backend, "outcome": outcome })
            })
            .collect();
        object(json!({ "code": self.code, "failed": failed }))
    }
}

/// What a reload found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// These variables have new values (or appeared, or went away).
    Changed(Vec<String>),
    Unchanged,
    /// The backends could not give every value; the child keeps the ones it has, last confirmed
    /// `age_s` seconds ago.
    Failed {
        failure: Failure,
        age_s: u64,
    },
}

/// One record of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Every variable of a resolve, with its outcome.
    Resolve {
        trigger: Trigger,
        vars: Vec<VarRecord>,
    },
    /// The first resolve failed: nothing was started.
    StartFailed(Failure),
    /// A signal ended secret-run before the command was started.
    StartInterrupted { signal: Signal, code: u8 },
    /// `--exec`: the command replaced secret-run, keeping its PID.
    Exec { pid: i32 },
    /// A child was started.
    Start { pid: i32 },
    /// The child ended by itself (or after a forwarded signal).
    Exit { pid: i32, code: u8 },
    /// A child was stopped by secret-run (a restart, an overlap hand-over).
    Stop { pid: i32, code: u8 },
    /// `on_change = "restart"`: the new child replaced the stopped one.
    Restart { old_pid: i32, pid: i32 },
    /// `on_change = "restart"` with `ready`: the restarted child is ready.
    Ready { pid: i32 },
    /// `on_change = "restart"` with `ready`: the restarted child was not ready within
    /// `ready.timeout` (it keeps running).
    NotReady { pid: i32 },
    Reload {
        trigger: Trigger,
        outcome: ReloadOutcome,
    },
    /// `on_change = "signal"`: the child was told to re-read its secrets.
    Signal { pid: i32, signal: Signal },
    /// `on_change = "overlap"`: a new child is tried beside the old one.
    OverlapStart { old_pid: i32, pid: i32 },
    /// The new child was ready; the old one has been stopped.
    Overlap { old_pid: i32, pid: i32 },
    /// The new child was not ready in time (or ended): it was stopped, the old one kept.
    OverlapFailed { pid: i32, code: u8 },
    /// The child was restarted on last-known-good values: the backends could not be reached.
    StaleServe { failure: Failure, age_s: u64 },
    /// The child was not restarted: its last-known-good values are older than `max_stale`.
    StaleRefused { failure: Failure, age_s: u64 },
    /// What happened to an issued credential.
    Lease {
        what: LeaseEvent,
        lease: LeaseRecord,
    },
    /// `max_concurrent_restarts`: waiting for a restart slot, one taken, one given back.
    Slot { what: &'static str },
    /// `restart_spread`: new values wait this long before they are applied.
    SpreadWait { delay_ms: u64 },
    /// The child `pid` was started with these issued credentials.
    LeaseUse { pid: i32, leases: Vec<String> },
    /// A backend was unavailable at start: these variables came from the cache, confirmed
    /// this many seconds ago.
    CacheServe { vars: Vec<(String, u64)> },
    /// `secret-run rotate`: one step of a rotation.
    Rotate {
        var: String,
        step: &'static str,
        old_version: Option<String>,
        new_version: Option<String>,
        outcome: String,
    },
    /// `secret-run get`: a value was printed.
    Get { var: String },
    /// `secret-run put` or `migrate`: a value was written to `backend` at `path`.
    Put {
        var: String,
        backend: String,
        path: String,
        version: Option<String>,
    },
    /// `secret-run export`: these values were written out, in this format.
    Export {
        vars: Vec<String>,
        format: &'static str,
    },
}

/// An issued credential as the log names it: never its id's secret part, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `database/creds/app/…1a2b3c4d`, or `pki/issue/web (certificate)`.
    pub lease: String,
    pub backend: String,
    pub path: String,
}

/// The steps of an issued credential's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Issued, lasting `ttl_s`; the variables it gave.
    Issue {
        ttl_s: u64,
        renewable: bool,
        vars: Vec<String>,
    },
    /// Extended by `ttl_s`.
    Renew {
        ttl_s: u64,
    },
    /// A renewal failed (the outcome word says why); tried again while the lease lasts.
    RenewFailed {
        outcome: &'static str,
    },
    /// It must be replaced before it ends: a reload issues a new one (`reason`).
    Expiring {
        reason: &'static str,
    },
    /// Its end passed and it was not replaced: the child keeps running on it, and `max_stale`
    /// decides about restarts.
    Expired,
    Revoke,
    RevokeFailed {
        outcome: &'static str,
    },
}

impl LeaseEvent {
    fn word(&self) -> &'static str {
        match self {
            LeaseEvent::Issue { .. } => "lease-issue",
            LeaseEvent::Renew { .. } => "lease-renew",
            LeaseEvent::RenewFailed { .. } => "lease-renew-failed",
            LeaseEvent::Expiring { .. } => "lease-expiring",
            LeaseEvent::Expired => "lease-expired",
            LeaseEvent::Revoke => "lease-revoke",
            LeaseEvent::RevokeFailed { .. } => "lease-revoke-failed",
        }
    }
}

impl Event {
    /// The record's `event` word and its other fields, in the order they are written.
    fn fields(&self) -> (&'static str, Map<String, Value>) {
        match self {
            Event::Resolve { trigger, vars } => {
                let vars: Vec<Value> = vars.iter().map(describe).collect();
                (
                    "resolve",
                    object(json!({ "trigger": trigger.as_str(), "vars": vars })),
                )
            }
            Event::StartFailed(failure) => ("start-failed", failure.fields()),
            Event::StartInterrupted { signal, code } => (
                "start-failed",
                object(json!({ "signal": signal.as_str(), "code": code })),
            ),
            Event::Exec { pid } => ("exec", object(json!({ "pid": pid }))),
            Event::Start { pid } => ("start", object(json!({ "pid": pid }))),
            Event::Exit { pid, code } => ("exit", exit_fields(*pid, *code)),
            Event::Stop { pid, code } => ("stop", exit_fields(*pid, *code)),
            Event::Restart { old_pid, pid } => {
                ("restart", object(json!({ "old_pid": old_pid, "pid": pid })))
            }
            Event::Ready { pid } => ("ready", object(json!({ "pid": pid }))),
            Event::NotReady { pid } => ("not-ready", object(json!({ "pid": pid }))),
            Event::Reload { trigger, outcome } => {
                let fields = match outcome {
                    ReloadOutcome::Failed { failure, age_s } => {
                        let mut fields = failure.fields();
                        fields.extend(object(json!({
                            "trigger": trigger.as_str(),
                            "outcome": "failed",
                            "values_age_s": age_s,
                        })));
                        fields
                    }
                    ReloadOutcome::Changed(names) => object(
                        json!({ "trigger": trigger.as_str(), "outcome": "changed", "changed": names }),
                    ),
                    ReloadOutcome::Unchanged => object(
                        json!({ "trigger": trigger.as_str(), "outcome": "unchanged", "changed": [] }),
                    ),
                };
                ("reload", fields)
            }
            Event::Signal { pid, signal } => (
                "signal",
                object(json!({ "pid": pid, "signal": signal.as_str() })),
            ),
            Event::OverlapStart { old_pid, pid } => (
                "overlap-start",
                object(json!({ "old_pid": old_pid, "pid": pid })),
            ),
            Event::Overlap { old_pid, pid } => {
                ("overlap", object(json!({ "old_pid": old_pid, "pid": pid })))
            }
            Event::OverlapFailed { pid, code } => ("overlap-failed", exit_fields(*pid, *code)),
            Event::StaleServe { failure, age_s } => ("stale-serve", aged(failure, *age_s)),
            Event::StaleRefused { failure, age_s } => ("stale-refused", aged(failure, *age_s)),
            Event::Lease { what, lease } => {
                let mut fields = object(json!({
                    "lease": lease.lease,
                    "backend": lease.backend,
                    "path": lease.path,
                }));
                let extra = match what {
                    LeaseEvent::Issue {
                        ttl_s,
                        renewable,
                        vars,
                    } => json!({ "ttl_s": ttl_s, "renewable": renewable, "vars": vars }),
                    LeaseEvent::Renew { ttl_s } => json!({ "ttl_s": ttl_s }),
                    LeaseEvent::RenewFailed { outcome } | LeaseEvent::RevokeFailed { outcome } => {
                        json!({ "outcome": outcome })
                    }
                    LeaseEvent::Expiring { reason } => json!({ "reason": reason }),
                    LeaseEvent::Expired | LeaseEvent::Revoke => json!({}),
                };
                fields.extend(object(extra));
                (what.word(), fields)
            }
            Event::LeaseUse { pid, leases } => {
                ("lease-use", object(json!({ "pid": pid, "leases": leases })))
            }
            Event::CacheServe { vars } => {
                let vars: Vec<Value> = vars
                    .iter()
                    .map(|(var, age_s)| json!({ "var": var, "age_s": age_s }))
                    .collect();
                ("cache-serve", object(json!({ "vars": vars })))
            }
            Event::Get { var } => ("get", object(json!({ "var": var }))),
            Event::Slot { what } => (what, Map::new()),
            Event::SpreadWait { delay_ms } => {
                ("spread-wait", object(json!({ "delay_ms": delay_ms })))
            }
            Event::Rotate {
                var,
                step,
                old_version,
                new_version,
                outcome,
            } => (
                "rotate",
                object(json!({
                    "var": var,
                    "step": step,
                    "old_version": old_version,
                    "new_version": new_version,
                    "outcome": outcome,
                })),
            ),
            Event::Put {
                var,
                backend,
                path,
                version,
            } => (
                "put",
                object(json!({ "var": var, "backend": backend, "path": path, "version": version })),
            ),
            Event::Export { vars, format } => {
                ("export", object(json!({ "vars": vars, "format": format })))
            }
        }
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn aged(failure: &Failure, age_s: u64) -> Map<String, Value> {
    let mut fields = failure.fields();
    fields.insert("values_age_s".into(), json!(age_s));
    fields
}

/// `pid` and `code`, and the signal's name when a signal ended the child.
fn exit_fields(pid: i32, code: u8) -> Map<String, Value> {
    if code > 128 {
        let sig = Signal::try_from(i32::from(code - 128)).map_or("?", Signal::as_str);
        object(json!({ "pid": pid, "code": code, "signal": sig }))
    } else {
        object(json!({ "pid": pid, "code": code }))
    }
}

fn describe(v: &VarRecord) -> Value {
    let mut m = Map::new();
    m.insert("var".into(), json!(v.var));
    m.insert("backend".into(), json!(v.backend));
    m.insert("path".into(), json!(v.path));
    if let Some(version) = &v.version {
        m.insert("version".into(), json!(version));
    }
    m.insert("outcome".into(), json!(v.outcome));
    Value::Object(m)
}

#[derive(Debug)]
pub struct Audit {
    path: Option<PathBuf>,
    name: Option<String>,
    /// Set by `in_background`: records go to a writer thread, in order.
    writer: Option<Writer>,
}

#[derive(Debug)]
struct Writer {
    records: std::sync::mpsc::Sender<(std::time::SystemTime, Event)>,
    done: std::sync::mpsc::Receiver<()>,
}

/// How long an ending run waits for its last records to reach a slow log.
const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens for appending, creating with mode 0600. Never through a symlink (O_NOFOLLOW), never
/// waiting (O_NONBLOCK: a FIFO without a reader fails at once instead of hanging), and only a
/// regular file is accepted; one that others can read or write is made 0600 again.
fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::PermissionsExt;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                std::io::Error::other("it is a symlink; name the file itself")
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other(
            "it is not a regular file (a FIFO, a device?); name a plain file",
        ));
    }
    if meta.permissions().mode() & 0o7777 != 0o600 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

fn append(path: &Path, line: &str) {
    // One write of the whole line: with O_APPEND, lines from concurrent writers stay whole.
    if let Err(e) = open_append(path).and_then(|mut f| f.write_all(line.as_bytes())) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write to the audit log");
    }
}

impl Audit {
    /// Opens (creating, 0600) the log for appending; `None` writes nothing.
    /// Checks that the log can be written before anything starts. Each record then opens the
    /// file again, so that a log moved away by logrotate is followed by a new one.
    pub fn open(path: Option<&Path>, name: Option<&str>) -> Result<Audit, Error> {
        if let Some(p) = path {
            open_append(p).map_err(|source| Error::Audit {
                path: p.to_path_buf(),
                source,
            })?;
        }
        Ok(Audit {
            path: path.map(Path::to_path_buf),
            name: name.map(str::to_owned),
            writer: None,
        })
    }

    /// From now on records are written (and serialized) by a thread of their own: the
    /// supervisor's event loop (signals, reaping) never waits on the log's filesystem.
    pub fn in_background(&mut self) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let name = self.name.clone();
        let (records, rx) = std::sync::mpsc::channel::<(std::time::SystemTime, Event)>();
        let (finished, done) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                for (at, event) in rx {
                    append(&path, &line(at, name.as_deref(), &event));
                }
                let _ = finished.send(());
            });
        match spawned {
            Ok(_) => self.writer = Some(Writer { records, done }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the audit log's writer; writing inline")
            }
        }
    }

    /// Appends one record. A failed write is logged, not fatal: the service keeps running.
    pub fn record(&mut self, event: Event) {
        let Some(path) = &self.path else {
            return;
        };
        let at = std::time::SystemTime::now();
        match &self.writer {
            Some(w) => {
                if let Err(unsent) = w.records.send((at, event)) {
                    let (at, event) = unsent.0;
                    append(path, &line(at, self.name.as_deref(), &event));
                }
            }
            None => append(path, &line(at, self.name.as_deref(), &event)),
        }
    }
}

/// One JSON line: `ts`, `name` (the manifest's), `event`, then the event's fields.
fn line(at: std::time::SystemTime, name: Option<&str>, event: &Event) -> String {
    let (word, fields) = event.fields();
    let mut record = Map::new();
    record.insert(
        "ts".into(),
        Value::String(humantime::format_rfc3339_millis(at).to_string()),
    );
    if let Some(name) = name {
        record.insert("name".into(), Value::String(name.to_owned()));
    }
    record.insert("event".into(), Value::String(word.into()));
    record.extend(fields);
    let mut line = Value::Object(record).to_string();
    line.push('\n');
    line
}

impl Drop for Audit {
    /// The last records (stop, exit) are written before secret-run exits, unless the log's
    /// filesystem hangs: then the exit is not held back longer than `FLUSH_WAIT`.
    fn drop(&mut self) {
        if let Some(Writer { records, done }) = self.writer.take() {
            drop(records);
            let _ = done.recv_timeout(FLUSH_WAIT);
        }
    }
}
