//! Launching the command: finding it before anything is fetched, building its environment at the
//! last moment (the only place values are exposed), then exec or supervise.

pub mod exec;
pub mod exit;
pub mod files;
pub mod leases;
pub mod listen;
pub mod redirect;
pub mod supervise;

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use secrecy::ExposeSecret;

use crate::error::{Error, Result};
use crate::manifest::{EnvPolicy, Inherit};
use crate::resolve::{Outcome, ResolvedVar};

/// The command to run: where it was found, and its argv as the user wrote it.
#[derive(Debug)]
pub struct Target {
    pub path: PathBuf,
    pub argv: Vec<OsString>,
}

/// Finds the command the way a shell would: a name with a `/` is used as it is, any other name
/// is looked up on PATH. Not found is 127, found but not executable is 126.
pub fn find_command(argv: Vec<OsString>) -> Result<Target> {
    let Some(program) = argv.first() else {
        return Err(Error::Usage(
            "no command given: usage: secret-run [OPTIONS] -- CMD [ARGS...]".into(),
        ));
    };
    if program.is_empty() {
        return Err(Error::Usage("the command name is empty".into()));
    }
    let shown = program.to_string_lossy().into_owned();
    let path = if program.as_encoded_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        check_executable(&path, &shown)?;
        path
    } else {
        match which::which(program) {
            Ok(path) => path,
            Err(_) => return Err(not_on_path(program, &shown)),
        }
    };
    Ok(Target { path, argv })
}

fn check_executable(path: &Path, shown: &str) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::CommandNotFound {
                name: shown.to_owned(),
                hint: ": no such file".into(),
            }
        } else {
            Error::CannotExecute {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        }
    })?;
    if meta.is_dir() {
        return Err(Error::CannotExecute {
            path: path.to_path_buf(),
            reason: "it is a directory".into(),
        });
    }
    if nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_err() {
        return Err(Error::CannotExecute {
            path: path.to_path_buf(),
            reason: format!(
                "permission denied (mode {:o}); make it executable with `chmod +x`",
                meta.permissions().mode() & 0o7777
            ),
        });
    }
    Ok(())
}

/// `which` skips files that are not executable; a shell says 126 for those, so look again.
fn not_on_path(program: &OsStr, shown: &str) -> Error {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path_var) {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return Error::CannotExecute {
                path: candidate,
                reason: "permission denied (found on PATH, but it is not executable)".into(),
            };
        }
    }
    Error::CommandNotFound {
        name: shown.to_owned(),
        hint: " (not found on PATH)".into(),
    }
}

/// The child's command: its environment is secret-run's (as `[env]` allows, without the removed
/// variables and the backends' own credentials), plus the resolved secrets, and for those
/// delivered as files (and `[files]` with `env`) the files' paths.
pub fn child_command(
    target: &Target,
    policy: &EnvPolicy,
    vars: &[ResolvedVar],
    consumed: &[String],
    paths: &std::collections::BTreeMap<String, String>,
) -> Command {
    let mut cmd = Command::new(&target.path);
    if let Some((arg0, args)) = target.argv.split_first() {
        cmd.arg0(arg0).args(args);
    }
    cmd.env_clear();
    for (name, value) in std::env::vars_os() {
        if inherits(policy, consumed, &name) {
            cmd.env(name, value);
        }
    }
    for var in vars {
        // Delivered as a file: the variable holds the file's path.
        if let Some(path) = paths.get(var.name.as_str()) {
            if var.value().is_some() {
                cmd.env(var.name.as_str(), path);
            }
            continue;
        }
        match &var.outcome {
            Outcome::Value(v) | Outcome::Default(v) => {
                cmd.env(var.name.as_str(), v.expose_secret());
            }
            // Absent means unset, even when secret-run itself has a variable of that name.
            Outcome::Absent => {
                cmd.env_remove(var.name.as_str());
            }
            Outcome::Failed(_) | Outcome::Unissued => {}
        }
    }
    // `[files]` tables' `env`: variables that only name a file.
    for (name, path) in paths {
        if !vars.iter().any(|v| v.name.as_str() == name) {
            cmd.env(name, path);
        }
    }
    cmd
}

fn inherits(policy: &EnvPolicy, consumed: &[String], name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    if policy.remove.iter().any(|r| *r == name) {
        return false;
    }
    match &policy.inherit {
        Inherit::All => !consumed.iter().any(|c| *c == name),
        Inherit::Nothing => false,
        // Naming a credential here is how the manifest asks for it to be passed on.
        Inherit::Only(list) => list.iter().any(|k| *k == name),
    }
}

/// A redactor for every value of `vars` (delivered as files or not), and the names of those too
/// short to redact.
pub fn redactor_of(
    vars: &[ResolvedVar],
    plan: &crate::manifest::plan::Plan,
) -> (crate::redact::Redactor, Vec<String>) {
    crate::redact::Redactor::new(
        vars.iter()
            .filter_map(|v| v.value().map(|s| (v.name.as_str(), s.expose_secret()))),
        plan.run.redact_min_length,
    )
}
