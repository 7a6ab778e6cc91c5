//! `--exec`: replace secret-run with the command (same PID, nothing left resident), for CI steps
//! and for images that already have an init.

use std::os::unix::process::CommandExt;
use std::process::Command;

use super::Target;
use crate::error::Error;

/// Returns only when execve failed.
pub fn exec(mut cmd: Command, target: &Target) -> Error {
    tracing::debug!(program = %target.path.display(), "exec");
    let err = cmd.exec();
    spawn_error(target, &err)
}

/// Maps a failure to start the command to 127 (gone) or 126 (cannot execute).
pub fn spawn_error(target: &Target, err: &std::io::Error) -> Error {
    if err.kind() == std::io::ErrorKind::NotFound {
        Error::CommandNotFound {
            name: target.path.display().to_string(),
            hint: format!(": {err}"),
        }
    } else if err.raw_os_error() == Some(nix::libc::E2BIG) {
        Error::CannotExecute {
            path: target.path.clone(),
            reason: format!(
                "{err}: the environment with the secrets is larger than the kernel accepts; pass large secrets as files"
            ),
        }
    } else {
        Error::CannotExecute {
            path: target.path.clone(),
            reason: err.to_string(),
        }
    }
}
