//! The child as a process: spawning it (its environment built at the last moment, its
//! `pre_exec`), signalling it or its process group, and the terminal it may hold.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;

use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;

use std::process::Command;

use super::Options;
use crate::error::{Error, Result};
use crate::launch::Target;
use crate::launch::exec::spawn_error;
use crate::launch::listen::{Image, Listeners};
use crate::manifest::plan::Plan;
use crate::resolve::ResolvedVar;

/// A child just started; `holds_terminal` when it was made the terminal's foreground group.
#[derive(Debug)]
pub struct Spawned {
    pub pid: Pid,
    pub holds_terminal: bool,
}

/// What a child gets besides its values.
#[derive(Debug)]
pub struct Extras<'a> {
    /// The `listen` sockets, at 3, 4, … with LISTEN_FDS and LISTEN_PID.
    pub listeners: &'a Listeners,
    /// Its own `NOTIFY_SOCKET` (`ready.notify`).
    pub notify_socket: Option<&'a str>,
    /// secret-run's own `NOTIFY_SOCKET` is for secret-run: the child does not get it.
    pub hide_manager: bool,
    /// Variables that hold a delivered file's path.
    pub paths: &'a std::collections::BTreeMap<String, String>,
    /// The pipes of redacted output, when the run has them.
    pub redirect: Option<&'a crate::launch::redirect::Redirect>,
}

/// Starts a child with `values`. It dies with secret-run (PR_SET_PDEATHSIG), so a SIGKILLed
/// supervisor leaves no orphan holding secrets.
pub fn spawn(
    target: &Target,
    plan: &Plan,
    values: &[ResolvedVar],
    opts: Options,
    extras: &Extras<'_>,
) -> Result<Spawned> {
    let mut cmd = super::super::child_command(
        target,
        &plan.env,
        values,
        &plan.consumed_env(),
        extras.paths,
    );
    if let Some(redirect) = extras.redirect {
        let (out, err) = redirect.for_child();
        if let Some(out) = out {
            cmd.stdout(out);
        }
        if let Some(err) = err {
            cmd.stderr(err);
        }
    }
    match extras.notify_socket {
        Some(path) => {
            cmd.env("NOTIFY_SOCKET", path);
        }
        None if extras.hide_manager => {
            cmd.env_remove("NOTIFY_SOCKET");
        }
        None => {}
    }
    if opts.process_group {
        cmd.process_group(0);
    }
    // In a group of its own the child is not in the terminal's foreground: reading the
    // terminal would stop it (SIGTTIN) for good. It gets the foreground, as a shell gives a
    // job; the descriptor is duplicated here, since nothing may be allocated after fork.
    let terminal = if opts.process_group && got_it_from_terminal() {
        std::io::stdin().as_fd().try_clone_to_owned().ok()
    } else {
        None
    };
    let holds_terminal = terminal.is_some();
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed and the allocator may be locked by another thread of
    // the parent. It makes system calls only (setrlimit, prctl, getppid, sigprocmask,
    // tcsetpgrp), on values prepared before the fork (`parent`, `terminal`, the core limit in
    // a OnceLock that is only read). It allocates nothing: an `io::Error` made from an errno
    // or from an `ErrorKind` is stored inline (std's "simple" representation); only
    // `io::Error::new`/`other` with a message would allocate, and none is used here.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            crate::protect::restore_core_limit().map_err(std::io::Error::from)?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The parent may have died before the line above: then nobody would kill us.
            if nix::unistd::getppid() != parent {
                return Err(std::io::ErrorKind::Other.into());
            }
            if let Some(tty) = &terminal {
                let _ = give_terminal(tty, nix::unistd::getpid());
            }
            Ok(())
        });
    }
    if !extras.listeners.is_empty() {
        pass_sockets(&mut cmd, target, extras.listeners)?;
    }
    let child = cmd.spawn().map_err(|e| spawn_error(target, &e))?;
    // The command holds a copy of the environment, values included: let it go now.
    drop(cmd);
    let pid = Pid::from_raw(child.id() as i32);
    // Reaped with waitpid like every other child; std's handle is not needed.
    drop(child);
    tracing::debug!(pid = pid.as_raw(), program = %target.path.display(), "child started");
    Ok(Spawned {
        pid,
        holds_terminal,
    })
}

/// The `listen` sockets go to the child at 3, 4, …, with `LISTEN_PID` set to its own PID: the
/// child executes itself from a layout made before the fork ([`Image`]), once the sockets are
/// in place. Runs after the other `pre_exec` work (closures run in order).
fn pass_sockets(cmd: &mut Command, target: &Target, listeners: &Listeners) -> Result<()> {
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        cmd.env_remove(var);
    }
    let staged = listeners.staged()?;
    let arg0 = target
        .argv
        .first()
        .map_or_else(|| target.path.as_os_str(), |a| a.as_os_str());
    let mut image = Image::of(cmd, arg0, &listeners.env()).ok_or_else(|| Error::CannotExecute {
        path: target.path.clone(),
        reason: "its path, an argument or a variable contains a NUL byte".into(),
    })?;
    // SAFETY: as for the first closure: after fork, only system calls (dup2, getpid, execve)
    // on memory laid out before the fork; the PID is written into a buffer that exists
    // already, digit by digit. `last_os_error` is stored inline; nothing is allocated.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            staged.install()?;
            Err(image.exec())
        });
    }
    Ok(())
}

/// The process or, with `--process-group`, the whole group a signal for `pid` goes to.
pub fn signal_target(pid: Pid, opts: Options) -> Pid {
    if opts.process_group {
        Pid::from_raw(-pid.as_raw())
    } else {
        pid
    }
}

/// Sends `sig`; a child already gone (ESRCH) is about to be reaped, which is not an error.
pub fn send(pid: Pid, sig: Signal, opts: Options) {
    tracing::debug!(signal = %sig, pid = pid.as_raw(), "signalling");
    if let Err(e) = kill(signal_target(pid, opts), sig) {
        tracing::debug!(signal = %sig, error = %e, "signalling failed");
    }
}

/// The child (in a group of its own, holding the terminal) was stopped: Ctrl-Z. The shell
/// only knows secret-run as the job, so secret-run takes the terminal back and stops too;
/// `fg` continues it, and it hands the terminal and the SIGCONT on to the child.
pub fn follow_stop(pid: Pid, opts: Options) {
    tracing::debug!(
        pid = pid.as_raw(),
        "the child was stopped from the terminal; stopping too"
    );
    let hand_over = |pgrp| {
        if let Err(e) = give_terminal(std::io::stdin(), pgrp) {
            tracing::debug!(error = %e, "cannot hand the terminal over");
        }
    };
    hand_over(nix::unistd::getpgrp());
    let _ = kill(nix::unistd::getpid(), Signal::SIGSTOP);
    // Continued.
    hand_over(pid);
    let _ = kill(signal_target(pid, opts), Signal::SIGCONT);
}

/// Makes `pgrp` the foreground group of the terminal `tty`, with SIGTTOU blocked meanwhile: from
/// a background group (the child before its exec, secret-run taking the terminal back),
/// tcsetpgrp would stop the caller. Async-signal-safe: system calls only, nothing allocated.
fn give_terminal(tty: impl AsFd, pgrp: Pid) -> nix::Result<()> {
    let mut ttou = SigSet::empty();
    ttou.add(Signal::SIGTTOU);
    let _ = ttou.thread_block();
    let given = nix::unistd::tcsetpgrp(tty, pgrp);
    let _ = ttou.thread_unblock();
    given
}

/// The terminal sends SIGINT to its whole foreground process group, which the child shares with
/// secret-run when stdin is that terminal and secret-run is in the foreground.
pub fn got_it_from_terminal() -> bool {
    let stdin = std::io::stdin();
    nix::unistd::isatty(&stdin).unwrap_or(false)
        && nix::unistd::tcgetpgrp(&stdin).is_ok_and(|fg| fg == nix::unistd::getpgrp())
}
