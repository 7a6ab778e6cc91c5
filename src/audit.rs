//! The audit log: one JSON object per line, appended to a file created with mode 0600, for every
//! event of a supervised run (resolve, start, reload, restart, signal, overlap, stale-serve, stop,
//! exit). Records name variables, backends, paths, versions, outcomes and exit codes; never a
//! value, never a hash of one (a short secret's SHA-256 can be brute-forced), and never an error
//! message (a provider's stderr may print the value it failed to deliver).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::resolve::{Outcome, ResolveFailure, ResolvedVar};

#[derive(Debug)]
pub struct Audit {
    path: Option<PathBuf>,
    name: Option<String>,
}

/// Opens for appending, creating with mode 0600.
fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl Audit {
    /// Opens (creating, 0600) the log for appending; `None` writes nothing.
    /// Checks that the log can be written before anything starts. Each record then opens the
    /// file again, so that a log moved away by logrotate is followed by a new one.
    pub fn open(path: Option<&Path>, name: Option<&str>) -> Result<Audit, String> {
        if let Some(p) = path {
            open_append(p)
                .map_err(|e| format!("cannot open the audit log {}: {e}", p.display()))?;
        }
        Ok(Audit {
            path: path.map(Path::to_path_buf),
            name: name.map(str::to_owned),
        })
    }

    /// Appends one event. A failed write is logged, not fatal: the service keeps running.
    pub fn event(&mut self, event: &str, fields: Value) {
        let Some(path) = &self.path else {
            return;
        };
        let mut record = Map::new();
        record.insert(
            "ts".into(),
            Value::String(
                humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            ),
        );
        if let Some(name) = &self.name {
            record.insert("name".into(), Value::String(name.clone()));
        }
        record.insert("event".into(), Value::String(event.into()));
        if let Value::Object(extra) = fields {
            record.extend(extra);
        }
        let mut line = Value::Object(record).to_string();
        line.push('\n');
        // One write of the whole line: with O_APPEND, lines from concurrent writers stay whole.
        if let Err(e) = open_append(path).and_then(|mut f| f.write_all(line.as_bytes())) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write to the audit log");
        }
    }

    /// The outcome of every variable of a resolve: backend, path, version, outcome.
    pub fn resolve(&mut self, trigger: &str, vars: &[ResolvedVar]) {
        let vars: Vec<Value> = vars.iter().map(describe).collect();
        self.event("resolve", json!({ "trigger": trigger, "vars": vars }));
    }
}

/// Why a resolve could not give the command its values, as the audit log records it: the exit
/// code it means and each variable that failed with its outcome word. No message text: a
/// provider's stderr or a server's error can carry a value, and the log promises never to.
pub fn failure(failure: &ResolveFailure) -> Value {
    let mut failed: Vec<Value> = failure
        .backends
        .iter()
        .flat_map(|b| {
            b.vars.iter().map(|name| {
                json!({ "var": name.as_str(), "backend": b.backend, "outcome": b.error.kind.label() })
            })
        })
        .collect();
    failed.extend(failure.vars.iter().map(|v| {
        json!({ "var": v.name.as_str(), "backend": v.backend, "outcome": v.error.kind.label() })
    }));
    json!({ "code": failure.exit_code(), "failed": failed })
}

fn describe(v: &ResolvedVar) -> Value {
    let outcome = match &v.outcome {
        Outcome::Value(_) => "ok",
        Outcome::Default(_) => "default",
        Outcome::Absent => "absent",
        Outcome::Failed(e) => e.kind.label(),
    };
    let mut m = Map::new();
    m.insert("var".into(), json!(v.name.as_str()));
    m.insert("backend".into(), json!(v.backend));
    m.insert("path".into(), json!(v.path));
    if let Some(version) = &v.version {
        m.insert("version".into(), json!(version));
    }
    m.insert("outcome".into(), json!(outcome));
    Value::Object(m)
}
