//! `secret-run scan`: the manifest's values (and their encodings) searched for in files, the
//! way a leak is found before it is committed. Prints where and whose value, never the value.

use std::path::{Path, PathBuf};

use super::setup::{load_plan, write_stdout};
use crate::cli::Global;
use crate::error::{Error, Result};
use crate::interrupt::Interrupts;
use crate::redact::Redactor;

/// Files larger than this are not read (a build artefact, a database).
const MAX_FILE: u64 = 64 << 20;

struct Found {
    path: String,
    line: usize,
    name: String,
}

pub fn run(
    global: &Global,
    paths: &[PathBuf],
    staged: bool,
    json: bool,
    interrupts: &Interrupts,
) -> Result<u8> {
    let plan = load_plan(global, false)?;
    let resolution = crate::resolve::resolve_blocking(&plan, global.timeout, interrupts)?;
    let vars = resolution.into_complete().map_err(Error::Resolve)?;
    let (redactor, short) = crate::launch::redactor_of(&vars, &plan);
    if !short.is_empty() {
        crate::output::warn_line(&format!(
            "secret-run: scan: not searched, {} bytes or shorter (redact_min_length): {}",
            plan.run.redact_min_length,
            short.join(", ")
        ));
    }
    let mut found = Vec::new();
    if staged {
        for (path, bytes) in staged_files()? {
            search(&redactor, &path, &bytes, &mut found);
        }
    } else {
        let roots: Vec<PathBuf> = if paths.is_empty() {
            vec![PathBuf::from(".")]
        } else {
            paths.to_vec()
        };
        let mut walk = ignore::WalkBuilder::new(&roots[0]);
        for root in &roots[1..] {
            walk.add(root);
        }
        // Hidden files too (`.env.local` is where values hide); .gitignore still rules.
        walk.hidden(false).filter_entry(|e| e.file_name() != ".git");
        for entry in walk.build().flatten() {
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            let path = entry.path();
            if path.metadata().is_ok_and(|m| m.len() > MAX_FILE) {
                continue;
            }
            if let Ok(bytes) = std::fs::read(path) {
                let bytes = secrecy::zeroize::Zeroizing::new(bytes);
                search(&redactor, &shown(path), &bytes, &mut found);
            }
        }
    }
    let out = if json {
        let list: Vec<serde_json::Value> = found
            .iter()
            .map(|f| serde_json::json!({ "path": f.path, "line": f.line, "name": f.name }))
            .collect();
        let mut text =
            serde_json::to_string_pretty(&serde_json::json!({ "found": list })).unwrap_or_default();
        text.push('\n');
        text
    } else {
        let lines: String = found
            .iter()
            .map(|f| format!("{}:{}: {}\n", f.path, f.line, f.name))
            .collect();
        crate::output::escape_controls(&lines).into_owned()
    };
    write_stdout(out.as_bytes())?;
    Ok(u8::from(!found.is_empty()))
}

fn shown(path: &Path) -> String {
    let p = path.strip_prefix("./").unwrap_or(path);
    p.display().to_string()
}

/// Every place a value is found in `bytes`, by line.
fn search(redactor: &Redactor, path: &str, bytes: &[u8], found: &mut Vec<Found>) {
    let mut line = 1;
    let mut counted = 0;
    for (at, name) in redactor.find_all(bytes) {
        line += bytes[counted..at].iter().filter(|b| **b == b'\n').count();
        counted = at;
        found.push(Found {
            path: path.to_owned(),
            line,
            name: name.to_owned(),
        });
    }
}

/// The files staged in git, as staged (the index, not the working tree).
fn staged_files() -> Result<Vec<(String, secrecy::zeroize::Zeroizing<Vec<u8>>)>> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| Error::Usage(format!("--staged needs git: {e}")))
    };
    let names = git(&[
        "diff",
        "--cached",
        "--name-only",
        "-z",
        "--diff-filter=ACMR",
    ])?;
    if !names.status.success() {
        return Err(Error::Usage(
            "--staged: `git diff --cached` failed (not in a git repository?)".into(),
        ));
    }
    let mut files = Vec::new();
    for name in names.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let blob = git(&["show", &format!(":{name}")])?;
        if blob.status.success() {
            files.push((name, secrecy::zeroize::Zeroizing::new(blob.stdout)));
        }
    }
    Ok(files)
}
