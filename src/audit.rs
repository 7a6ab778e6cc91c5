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
    /// Set by `in_background`: records go to a writer thread, in order.
    writer: Option<Writer>,
}

#[derive(Debug)]
struct Writer {
    lines: std::sync::mpsc::Sender<String>,
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
    pub fn open(path: Option<&Path>, name: Option<&str>) -> Result<Audit, String> {
        if let Some(p) = path {
            open_append(p)
                .map_err(|e| format!("cannot open the audit log {}: {e}", p.display()))?;
        }
        Ok(Audit {
            path: path.map(Path::to_path_buf),
            name: name.map(str::to_owned),
            writer: None,
        })
    }

    /// From now on records are written by a thread of their own: the supervisor's event loop
    /// (signals, reaping) never waits on the log's filesystem.
    pub fn in_background(&mut self) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let (lines, rx) = std::sync::mpsc::channel::<String>();
        let (finished, done) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                for line in rx {
                    append(&path, &line);
                }
                let _ = finished.send(());
            });
        match spawned {
            Ok(_) => self.writer = Some(Writer { lines, done }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the audit log's writer; writing inline")
            }
        }
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
        match &self.writer {
            Some(w) => {
                if let Err(unsent) = w.lines.send(line) {
                    append(path, &unsent.0);
                }
            }
            None => append(path, &line),
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
    let by_backend = failure
        .backends
        .iter()
        .flat_map(|b| b.vars.iter().map(move |name| (name, &b.backend, &b.error)));
    let by_var = failure.vars.iter().map(|v| (&v.name, &v.backend, &v.error));
    let failed: Vec<Value> = by_backend
        .chain(by_var)
        .map(|(name, backend, error)| {
            json!({ "var": name.as_str(), "backend": backend, "outcome": error.kind.label() })
        })
        .collect();
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

impl Drop for Audit {
    /// The last records (stop, exit) are written before secret-run exits, unless the log's
    /// filesystem hangs: then the exit is not held back longer than `FLUSH_WAIT`.
    fn drop(&mut self) {
        if let Some(Writer { lines, done }) = self.writer.take() {
            drop(lines);
            let _ = done.recv_timeout(FLUSH_WAIT);
        }
    }
}
