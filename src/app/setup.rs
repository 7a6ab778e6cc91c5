//! What every command starts from: the plan (manifest and command line), the deadline of its
//! reads, and a stdout that reports when it cannot be written.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use crate::cli::Global;
use crate::error::{Error, Result};
use crate::manifest::{self, plan};

/// Writes all of `bytes` to stdout; a closed or full stdout is `Error::Output` (74).
pub fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(Error::Output)
}

/// When reading the manifest must give up: `--timeout` from now.
pub fn deadline(global: &Global) -> std::time::Instant {
    std::time::Instant::now() + global.timeout
}

/// `issue`: read endpoints that create credentials (a run does; `check` only with `--issue`,
/// and `scan` never).
pub fn load_plan(global: &Global, issue: bool) -> Result<plan::Plan> {
    plan_with(global, issue, global.backend.as_deref(), false)
}

/// The plan with `backend` instead of `--backend`; with `every_entry`, for entries that name
/// their own backend too.
pub fn plan_with(
    global: &Global,
    issue: bool,
    backend: Option<&str>,
    every_entry: bool,
) -> Result<plan::Plan> {
    let manifest = manifest::load(&global.manifest, deadline(global))?;
    let opts = plan::PlanOptions {
        backend_override: backend.filter(|b| !b.is_empty()).map(str::to_owned),
        env_name: global.env_name.clone().filter(|e| !e.is_empty()),
        deadline: Some(deadline(global)),
        issue,
        every_entry,
    };
    plan::build(manifest, &opts)
}

/// A new file for its owner only, 0600 (an existing one only with `force`, set back to 0600:
/// a truncated file keeps its mode). `AlreadyExists` (73) without `force`.
pub fn create_private(path: &std::path::Path, force: bool, bytes: &[u8]) -> Result<()> {
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
