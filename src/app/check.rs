//! `secret-run check`: validate the manifest, resolve every secret, and report one line per
//! variable (name, backend, path, outcome), never a value. Exit 0 only when every required
//! secret resolves; otherwise the same code a launch would have failed with.

use super::setup::{load_plan, write_stdout};
use crate::cli::Global;
use crate::error::Result;
use crate::interrupt::Interrupts;
use crate::resolve::{self, Outcome};

struct FileRow {
    path: String,
    bytes: Option<usize>,
    problem: Option<String>,
}

struct Row {
    name: String,
    backend: String,
    kind: &'static str,
    path: String,
    key: Option<String>,
    version: Option<String>,
    about: Option<String>,
    optional: bool,
    as_file: bool,
    status: &'static str,
    detail: Option<String>,
}

pub fn run(global: &Global, json: bool, issue: bool, interrupts: &Interrupts) -> Result<u8> {
    let plan = load_plan(global, issue)?;
    let mut resolution = resolve::resolve_blocking(&plan, global.timeout, interrupts)?;
    // Issued only to be shown: revoked before anything is printed.
    let issued = std::mem::take(&mut resolution.issued);
    let dynamic = !issued.is_empty()
        || resolution
            .vars
            .iter()
            .any(|v| matches!(v.outcome, Outcome::Unissued));
    let count = issued.len();
    let revoked = crate::launch::leases::revoke_blocking(issued)
        .iter()
        .filter(|e| {
            matches!(
                e,
                crate::audit::Event::Lease {
                    what: crate::audit::LeaseEvent::Revoke,
                    ..
                }
            )
        })
        .count();
    let rows: Vec<Row> = resolution
        .vars
        .iter()
        .map(|r| {
            let p = plan.vars.iter().find(|p| p.name == r.name);
            let (status, detail) = match &r.outcome {
                Outcome::Value(_) => ("ok", None),
                Outcome::Default(_) => (
                    "default",
                    Some("not found; the manifest's default is used".to_owned()),
                ),
                Outcome::Absent => ("absent", Some("optional; not found, left unset".to_owned())),
                Outcome::Unissued => ("not-issued", None),
                Outcome::Failed(e) => (e.kind.label(), Some(e.message.clone())),
            };
            Row {
                name: r.name.to_string(),
                backend: r.backend.clone(),
                kind: plan.backends.get(&r.backend).map_or("", |b| b.kind),
                path: r.path.clone(),
                key: p.and_then(|p| p.key.as_ref()).map(ToString::to_string),
                version: r
                    .version
                    .clone()
                    .or_else(|| p.and_then(|p| p.version.clone())),
                about: r.about.clone(),
                optional: p.is_some_and(|p| p.optional),
                as_file: p.is_some_and(|p| p.as_file.is_some()),
                status,
                detail,
            }
        })
        .collect();
    // Every file rendered, nothing written: sizes and problems only.
    let files = crate::launch::files::Files::inspect(&plan).map(|f| f.render_all(&resolution.vars));
    let files: Vec<FileRow> = match files {
        Ok(list) => list
            .into_iter()
            .map(|(path, r)| match r {
                Ok(bytes) => FileRow {
                    path: path.display().to_string(),
                    bytes: Some(bytes),
                    problem: None,
                },
                Err(problem) => FileRow {
                    path: path.display().to_string(),
                    bytes: None,
                    problem: Some(problem),
                },
            })
            .collect(),
        Err(e) => vec![FileRow {
            path: String::new(),
            bytes: None,
            problem: Some(e.to_string()),
        }],
    };
    let mut code = match resolution.into_complete() {
        Ok(_) => 0,
        Err(failure) => failure.exit_code(),
    };
    if code == 0 && files.iter().any(|f| f.problem.is_some()) {
        code = crate::code::SECRET_MISSING;
    }
    let calls: Vec<serde_json::Value> = plan
        .backends
        .iter()
        .filter_map(|(name, h)| {
            h.backend.calls().map(|c| {
                serde_json::json!({ "name": name, "kind": h.kind, "calls": c.calls, "throttled": c.throttled })
            })
        })
        .collect();
    let out = if json {
        render_json(global, &rows, &files, &calls, code)
    } else {
        let mut text = render_table(&rows) + &render_files(&files);
        if count > 0 {
            // Certificates have no lease to revoke: they stay valid until their notAfter.
            text.push_str(&format!(
                "\n--issue: {count} credential(s) issued for this check; {revoked} lease(s) revoked\n"
            ));
        }
        if dynamic {
            text.push_str(DYNAMIC_NOTE);
        }
        // JSON escapes control characters itself; the table is for a terminal.
        crate::output::escape_controls(&text).into_owned()
    };
    write_stdout(out.as_bytes())?;
    if code != 0 && !json {
        let failed = rows
            .iter()
            .filter(|r| !matches!(r.status, "ok" | "default" | "absent" | "not-issued"))
            .count();
        crate::output::warn_line(&format!(
            "secret-run: check failed: {failed} of {} secrets did not resolve",
            rows.len()
        ));
    }
    Ok(code)
}

const DYNAMIC_NOTE: &str = "\nIssued credentials are renewed, replaced and revoked while secret-run supervises the command; with --exec nothing stays to do it: they last until their lease ends.\n";

fn render_table(rows: &[Row]) -> String {
    let path_of = |r: &Row| match &r.key {
        Some(k) => format!("{} [{k}]", r.path),
        None => r.path.clone(),
    };
    let width = |f: &dyn Fn(&Row) -> usize, title: &str| {
        rows.iter().map(f).max().unwrap_or(0).max(title.len())
    };
    let w_name = width(&|r| r.name.len(), "VARIABLE");
    let w_backend = width(&|r| r.backend.len(), "BACKEND");
    let w_path = width(&|r| path_of(r).len(), "PATH");
    let mut out = format!(
        "{:w_name$}  {:w_backend$}  {:w_path$}  STATUS\n",
        "VARIABLE", "BACKEND", "PATH"
    );
    for r in rows {
        let mut status = r.status.to_owned();
        match (&r.version, &r.about) {
            (Some(v), Some(a)) => status.push_str(&format!(" (version {v}, {a})")),
            (Some(v), None) => status.push_str(&format!(" (version {v})")),
            (None, Some(a)) => status.push_str(&format!(" ({a})")),
            (None, None) => {}
        }
        if let Some(d) = &r.detail {
            status.push_str(": ");
            status.push_str(&d.replace('\n', "\n    "));
        }
        out.push_str(&format!(
            "{:w_name$}  {:w_backend$}  {:w_path$}  {status}\n",
            r.name,
            r.backend,
            path_of(r)
        ));
    }
    if rows.is_empty() {
        out.push_str("(the manifest lists no secrets)\n");
    }
    out
}

fn render_files(files: &[FileRow]) -> String {
    if files.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nFILE  STATUS\n");
    for f in files {
        match (&f.bytes, &f.problem) {
            (Some(n), _) => out.push_str(&format!("{}  ok ({n} bytes)\n", f.path)),
            (None, Some(p)) => out.push_str(&format!("{}  error: {p}\n", f.path)),
            (None, None) => {}
        }
    }
    out
}

fn render_json(
    global: &Global,
    rows: &[Row],
    files: &[FileRow],
    calls: &[serde_json::Value],
    code: u8,
) -> String {
    let secrets: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "backend": r.backend,
                "kind": r.kind,
                "path": r.path,
                "key": r.key,
                "version": r.version,
                "about": r.about,
                "optional": r.optional,
                "as_file": r.as_file,
                "status": r.status,
                "detail": r.detail,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "manifest": global.manifest.display().to_string(),
        "ok": code == 0,
        "exit_code": code,
        "secrets": secrets,
        "backends": calls,
        "files": files
            .iter()
            .map(|f| serde_json::json!({ "path": f.path, "bytes": f.bytes, "problem": f.problem }))
            .collect::<Vec<_>>(),
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}
