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
        Some(path) => create(path, force, text.as_bytes())?,
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
        let line = dotenv_value(value).ok_or_else(|| {
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

/// Single quotes when nothing inside needs escaping (both read them literally, `$` and `#`
/// included); double quotes with `\\`, `\"`, `\n` otherwise, unless a `$` would be expanded.
fn dotenv_value(value: &str) -> Option<String> {
    if value.contains("${") {
        return None;
    }
    if !value.contains(['\'', '\\', '\n', '\r']) {
        return Some(format!("'{value}'"));
    }
    if value.contains(['$', '\r']) {
        return None;
    }
    let mut out = String::with_capacity(value.len() + 8);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    Some(out)
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

/// A new file, 0600 (an existing one only with `force`, set back to 0600).
fn create(path: &Path, force: bool, bytes: &[u8]) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let written = options.open(path).and_then(|mut f| {
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()
    });
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(Error::AlreadyExists(path.to_path_buf()))
        }
        Err(source) => Err(Error::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
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
    fn dotenv_quoting_is_chosen_so_that_nothing_is_read_differently() {
        assert_eq!(
            dotenv_value("a b#c $HOME \"q\"").as_deref(),
            Some("'a b#c $HOME \"q\"'")
        );
        assert_eq!(
            dotenv_value("it's\nline").as_deref(),
            Some("\"it's\\nline\"")
        );
        assert_eq!(
            dotenv_value("back\\slash").as_deref(),
            Some("\"back\\\\slash\"")
        );
        assert_eq!(dotenv_value("it's $HOME"), None);
        assert_eq!(dotenv_value("${PATH}"), None);
    }

    #[test]
    fn shell_quoting_survives_single_quotes() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
