//! The operator's commands on values: `get` (one value on stdout) and `export` (every value, in a
//! format another tool reads). Both resolve as a run would, with the same manifest, and are
//! audited by name. The text they build holding values is zeroed when dropped.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use secrecy::ExposeSecret;
use secrecy::zeroize::Zeroizing;

use super::setup::{load_plan, write_stdout};
use crate::audit::{Audit, Event};
use crate::cli::{ExportFormat, Global};
use crate::error::{Error, Result};
use crate::interrupt::Interrupts;
use crate::resolve::{self, ResolvedVar};

pub fn get(global: &Global, name: &str, no_newline: bool, interrupts: &Interrupts) -> Result<u8> {
    let plan = load_plan(global, true)?.only(name).map_err(Error::Usage)?;
    let vars = resolved(&plan, global, interrupts)?;
    let Some(value) = vars
        .iter()
        .find(|v| v.name.as_str() == name)
        .and_then(ResolvedVar::value)
    else {
        return Err(Error::Usage(format!(
            "`{name}` is optional and absent: there is no value to print"
        )));
    };
    let mut out = Zeroizing::new(value.expose_secret().as_bytes().to_vec());
    if !no_newline {
        out.push(b'\n');
    }
    audit(
        &plan,
        Event::Get {
            var: name.to_owned(),
        },
    )?;
    write_stdout(&out)?;
    Ok(0)
}

pub fn export(
    global: &Global,
    format: ExportFormat,
    output: Option<&Path>,
    force: bool,
    interrupts: &Interrupts,
) -> Result<u8> {
    let mut plan = load_plan(global, true)?;
    // Values, not the files a run would make of them.
    plan.files.clear();
    for v in &mut plan.vars {
        v.as_file = None;
    }
    let vars = resolved(&plan, global, interrupts)?;
    let values: Vec<(&str, &str)> = vars
        .iter()
        .filter_map(|v| v.value().map(|s| (v.name.as_str(), s.expose_secret())))
        .collect();
    let text = match format {
        ExportFormat::Dotenv => dotenv(&values)?,
        ExportFormat::Shell => Zeroizing::new(
            values
                .iter()
                .map(|(n, v)| format!("export {n}={}\n", shell_quote(v)))
                .collect::<String>(),
        ),
        ExportFormat::Json => {
            let map: serde_json::Map<String, serde_json::Value> = values
                .iter()
                .map(|(n, v)| ((*n).to_owned(), serde_json::Value::from(*v)))
                .collect();
            let mut text = serde_json::to_string_pretty(&map).unwrap_or_default();
            text.push('\n');
            Zeroizing::new(text)
        }
        ExportFormat::GithubEnv => github_env(&values),
    };
    let names: Vec<String> = values.iter().map(|(n, _)| (*n).to_owned()).collect();
    audit(
        &plan,
        Event::Export {
            vars: names,
            format: format_name(format),
        },
    )?;
    if format == ExportFormat::GithubEnv {
        let target = match output {
            Some(p) => p.to_path_buf(),
            None => std::env::var_os("GITHUB_ENV")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .ok_or_else(|| {
                    Error::Usage(
                        "--format github-env appends to $GITHUB_ENV, which is not set; give -o FILE"
                            .into(),
                    )
                })?,
        };
        // The runner hides these in every later log line, before the values reach its file.
        let masks: Zeroizing<String> = Zeroizing::new(
            values
                .iter()
                .flat_map(|(_, v)| v.lines())
                .filter(|l| !l.is_empty())
                .map(|l| format!("::add-mask::{l}\n"))
                .collect(),
        );
        write_stdout(masks.as_bytes())?;
        append(&target, text.as_bytes())?;
        return Ok(0);
    }
    match output {
        Some(path) => super::setup::create_private(path, force, text.as_bytes())?,
        None => write_stdout(text.as_bytes())?,
    }
    Ok(0)
}

fn format_name(format: ExportFormat) -> &'static str {
    match format {
        ExportFormat::Dotenv => "dotenv",
        ExportFormat::Json => "json",
        ExportFormat::Shell => "shell",
        ExportFormat::GithubEnv => "github-env",
    }
}

/// Every value of `plan`, or the run's error (the same codes as a start).
fn resolved(
    plan: &crate::manifest::plan::Plan,
    global: &Global,
    interrupts: &Interrupts,
) -> Result<Vec<ResolvedVar>> {
    let mut resolution = resolve::resolve_blocking(plan, global.timeout, interrupts)?;
    let issued = std::mem::take(&mut resolution.issued);
    for i in &issued {
        tracing::warn!(
            lease = %crate::launch::leases::label(&i.lease, &i.request.path),
            "an issued credential is printed, not kept: it is not renewed or revoked; {}",
            i.lease.about()
        );
    }
    resolution.into_complete().map_err(Error::Resolve)
}

/// One record in the manifest's audit log, when it has one.
fn audit(plan: &crate::manifest::plan::Plan, event: Event) -> Result<()> {
    let mut audit = Audit::open(plan.audit.as_deref(), plan.name.as_deref())?;
    audit.record(event);
    Ok(())
}

/// `'…'` for sh, bash and zsh: nothing inside single quotes is special but the quote itself.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

/// `NAME=…` lines that dotenvy and python-dotenv (and secret-run's own dotenv backend) all read
/// back as the same bytes; a value no quoting can carry through all of them is an error naming
/// it, never a line that reads back differently.
fn dotenv(values: &[(&str, &str)]) -> Result<Zeroizing<String>> {
    let mut text = Zeroizing::new(String::new());
    for (name, value) in values {
        let line = crate::backend::dotenv::quote(value).ok_or_else(|| {
            Error::Usage(format!(
                "`{name}` holds `${{` (python-dotenv expands it whatever the quoting), or `$` together with a quote, a backslash or a line break: no .env quoting reads back the same in dotenvy and python-dotenv; use --format json or shell"
            ))
        })?;
        text.push_str(name);
        text.push('=');
        text.push_str(&line);
        text.push('\n');
    }
    Ok(text)
}

/// GitHub's multi-line form, `NAME<<DELIM`, with a delimiter no value contains.
fn github_env(values: &[(&str, &str)]) -> Zeroizing<String> {
    let delimiter = loop {
        let d = format!("SECRET_RUN_EOF_{:016x}", fastrand::u64(..));
        if !values.iter().any(|(_, v)| v.contains(&d)) {
            break d;
        }
    };
    let mut text = Zeroizing::new(String::new());
    for (name, value) in values {
        text.push_str(&format!("{name}<<{delimiter}\n"));
        text.push_str(value);
        text.push_str(&format!("\n{delimiter}\n"));
    }
    text
}

fn append(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_single_quotes() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}

/// The largest value `put` reads from stdin or a file.
const MAX_PUT: usize = 1 << 20;

/// The new value of `name` for `put` and `rotate --stdin`: at most 1 MiB, one trailing newline
/// dropped. Empty is a usage error (`hint` says what to do); a NUL byte or text that is not
/// UTF-8 is a bad value (65), as when a backend holds one.
pub fn read_new_value(
    input: impl std::io::Read,
    name: &str,
    hint: &str,
) -> Result<secrecy::SecretString> {
    use std::io::Read;
    let mut bytes = Zeroizing::new(Vec::new());
    input
        .take(MAX_PUT as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Usage(format!("cannot read the new value: {e}")))?;
    if bytes.len() > MAX_PUT {
        return Err(Error::Usage(format!(
            "the new value is larger than {} MiB",
            MAX_PUT >> 20
        )));
    }
    if bytes.is_empty() {
        return Err(Error::Usage(format!("the new value is empty: {hint}")));
    }
    let invalid = |error| Error::Backend {
        what: format!("the new value of `{name}`"),
        error,
    };
    if bytes.contains(&0) {
        return Err(invalid(crate::secret::SecretError::invalid(
            "it holds a NUL byte, which no environment variable can carry",
        )));
    }
    let value = crate::secret::value_from_bytes(std::mem::take(&mut *bytes)).map_err(invalid)?;
    Ok(crate::secret::strip_one_newline(value))
}

pub fn put(global: &Global, name: &str, from_file: Option<&Path>, cas: Option<u64>) -> Result<u8> {
    let plan = load_plan(global, false)?.only(name).map_err(Error::Usage)?;
    let Some(var) = plan.vars.iter().find(|v| v.name.as_str() == name) else {
        return Err(Error::Usage(format!(
            "`{name}` is composed by a template: put the entries it uses instead"
        )));
    };
    let value = match from_file {
        Some(path) => std::fs::File::open(path)
            .map_err(|e| Error::Usage(format!("cannot read the new value: {e}")))
            .and_then(|f| read_new_value(f, name, "give a non-empty --from-file")),
        None => read_new_value(
            std::io::stdin().lock(),
            name,
            "pipe it in (`secret-run put NAME < file`), or give --from-file",
        ),
    }?;
    let written = write(&plan, var, value, cas, false, global)?;
    eprintln!(
        "secret-run: wrote `{name}` to backend `{}` at `{}`{}",
        var.backend,
        var.path,
        written
            .version
            .as_deref()
            .map(|v| format!(" (version {v})"))
            .unwrap_or_default()
    );
    Ok(0)
}

/// Writes one value of `plan`'s entry `var` through its backend, and audits it.
fn write(
    plan: &crate::manifest::plan::Plan,
    var: &crate::manifest::plan::PlannedVar,
    value: secrecy::SecretString,
    cas: Option<u64>,
    create_only: bool,
    global: &Global,
) -> Result<crate::backend::Written> {
    let what = format!(
        "`{}` to backend `{}` at `{}`",
        var.name, var.backend, var.path
    );
    let handle = plan
        .backends
        .get(&var.backend)
        .ok_or_else(|| Error::Internal(format!("no backend for {what}")))?;
    let writer = handle.backend.writer().ok_or_else(|| {
        Error::Usage(format!(
            "backend `{}` (kind {}) cannot be written: it reads values that something else provides",
            var.backend, handle.kind
        ))
    })?;
    let put = crate::backend::Put {
        path: var.path.clone(),
        key: var.key.clone(),
        value,
        cas,
        create_only,
    };
    let rt = resolve::runtime()?;
    let deadline = tokio::time::Instant::now() + global.timeout;
    let result = rt.block_on(writer.put(&put, deadline));
    rt.shutdown_background();
    let written = result.map_err(|error| Error::Backend {
        what: format!("cannot write {what}"),
        error,
    })?;
    audit(
        plan,
        Event::Put {
            var: var.name.to_string(),
            backend: var.backend.clone(),
            path: var.path.clone(),
            version: written.version.clone(),
        },
    )?;
    Ok(written)
}

/// How `migrate` runs.
#[derive(Debug)]
pub struct Migration<'a> {
    pub to: &'a str,
    pub from: Option<&'a str>,
    pub dry_run: bool,
    pub overwrite: bool,
    pub json: bool,
}

pub fn migrate(global: &Global, how: &Migration<'_>, interrupts: &Interrupts) -> Result<u8> {
    let source =
        super::setup::plan_with(global, false, how.from.or(global.backend.as_deref()), false)?;
    let target = super::setup::plan_with(global, false, Some(how.to), true)?;
    let resolution = if how.dry_run {
        None
    } else {
        Some(resolve::resolve_blocking(
            &source,
            global.timeout,
            interrupts,
        )?)
    };
    let mut rows: Vec<(String, String, String, &'static str)> = Vec::new();
    let mut code = 0;
    let mut created: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for (src, dst) in source.vars.iter().zip(&target.vars) {
        let name = src.name.to_string();
        let place = format!("{}:{}", dst.backend, dst.path);
        if src.backend == dst.backend && src.path == dst.path {
            rows.push((name, place, "already there".into(), "skipped"));
            continue;
        }
        let Some(resolution) = &resolution else {
            rows.push((
                name,
                place,
                format!("from {}:{}", src.backend, src.path),
                "would-write",
            ));
            continue;
        };
        let Some(resolved) = resolution.vars.iter().find(|v| v.name == src.name) else {
            continue;
        };
        let value = match &resolved.outcome {
            resolve::Outcome::Value(v) => v.clone(),
            resolve::Outcome::Default(_) | resolve::Outcome::Absent => {
                rows.push((name, place, "absent at the source".into(), "skipped"));
                continue;
            }
            resolve::Outcome::Failed(e) => {
                code = code.max(e.kind.exit_code());
                eprintln!(
                    "secret-run: `{name}` cannot be read from {}:{}: {e}",
                    src.backend, src.path
                );
                rows.push((name, place, e.kind.label().into(), "failed"));
                continue;
            }
            resolve::Outcome::Unissued => continue,
        };
        // Several entries may write fields of one secret: only the first write creates it.
        let create_only = !how.overwrite && !created.contains(&place_key(dst));
        match write(&target, dst, value, None, create_only, global) {
            Ok(w) => {
                created.insert(place_key(dst));
                let detail = w
                    .version
                    .map(|v| format!("version {v}"))
                    .unwrap_or_default();
                rows.push((name, place, detail, "written"));
            }
            Err(Error::Backend { error, .. })
                if error.kind == crate::secret::ErrorKind::Conflict =>
            {
                rows.push((
                    name,
                    place,
                    "a value is there; --overwrite replaces it".into(),
                    "kept",
                ));
            }
            Err(e) => {
                code = code.max(e.exit_code());
                eprintln!("secret-run: {e}");
                rows.push((name, place, e.exit_code().to_string(), "failed"));
            }
        }
    }
    let out = if how.json {
        let entries: Vec<serde_json::Value> = rows
            .iter()
            .map(|(n, p, d, o)| serde_json::json!({ "name": n, "target": p, "outcome": o, "detail": d }))
            .collect();
        let mut text = serde_json::to_string_pretty(&serde_json::json!({
            "to": how.to,
            "dry_run": how.dry_run,
            "entries": entries,
        }))
        .unwrap_or_default();
        text.push('\n');
        text
    } else {
        let w_name = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(8);
        let w_place = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(6);
        let mut text = format!("{:w_name$}  {:w_place$}  OUTCOME\n", "VARIABLE", "TARGET");
        for (n, p, d, o) in &rows {
            text.push_str(&format!("{n:w_name$}  {p:w_place$}  {o}"));
            if !d.is_empty() {
                text.push_str(&format!(" ({d})"));
            }
            text.push('\n');
        }
        text
    };
    write_stdout(crate::output::escape_controls(&out).as_bytes())?;
    Ok(code)
}

/// The secret an entry writes to (entries with different keys share it).
fn place_key(v: &crate::manifest::plan::PlannedVar) -> String {
    format!("{}\u{0}{}", v.backend, v.path)
}
