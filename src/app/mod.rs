//! What each command does, from parsed arguments to an exit code: the top layer, the only one
//! that knows the command line.

mod cache;
mod check;
mod init;
mod operate;
mod rotate;
mod scan;
mod setup;

use clap::CommandFactory;

use self::setup::{deadline, load_plan, write_stdout};
use crate::audit::{Audit, Event, Failure, Trigger, VarRecord};
use crate::cli::{Cli, Global, Sub};
use crate::error::{Error, Result};
use crate::interrupt::Interrupts;
use crate::launch::{self, exec, supervise};
use crate::resolve;

/// Runs the parsed command line; `Ok` carries the exit code.
pub fn run(cli: Cli) -> Result<u8> {
    if cli.exec && (cli.subreaper || cli.process_group) {
        return Err(Error::Usage(
            "--subreaper and --process-group are for supervise mode; --exec leaves no supervisor"
                .into(),
        ));
    }
    if cli.sub.is_some() && cli.exec {
        return Err(Error::Usage(
            "--exec goes with a command (`secret-run --exec -- CMD`), not with a subcommand".into(),
        ));
    }
    match cli.sub {
        Some(Sub::Check { json, issue }) => {
            let interrupts = Interrupts::block()?;
            check::run(&cli.global, json, issue, &interrupts)
        }
        Some(Sub::Scan {
            paths,
            staged,
            json,
        }) => {
            let interrupts = Interrupts::block()?;
            scan::run(&cli.global, &paths, staged, json, &interrupts)
        }
        Some(Sub::Init { from_dotenv, force }) => init::run(
            &cli.global.manifest,
            from_dotenv.as_deref(),
            force,
            deadline(&cli.global),
        ),
        Some(Sub::Cache { action }) => cache::run(&cli.global, action),
        Some(Sub::Get { name, no_newline }) => {
            let interrupts = Interrupts::block()?;
            operate::get(&cli.global, &name, no_newline, &interrupts)
        }
        Some(Sub::Put {
            name,
            from_file,
            cas,
        }) => operate::put(&cli.global, &name, from_file.as_deref(), cas),
        Some(Sub::Migrate {
            to,
            from,
            dry_run,
            overwrite,
            json,
        }) => {
            let interrupts = Interrupts::block()?;
            let how = operate::Migration {
                to: &to,
                from: from.as_deref(),
                dry_run,
                overwrite,
                json,
            };
            operate::migrate(&cli.global, &how, &interrupts)
        }
        Some(Sub::Rotate {
            name,
            stdin,
            generate,
            encoding,
            pidfile,
            pid,
            verify,
            reload_timeout,
            dry_run,
        }) => {
            let how = rotate::Rotation {
                name: &name,
                stdin,
                generate,
                encoding,
                pidfile: pidfile.as_deref(),
                pid,
                verify: verify.as_deref(),
                reload_timeout,
                dry_run,
            };
            rotate::run(&cli.global, &how)
        }
        Some(Sub::Export {
            format,
            output,
            force,
        }) => {
            let interrupts = Interrupts::block()?;
            operate::export(&cli.global, format, output.as_deref(), force, &interrupts)
        }
        Some(Sub::Completions { shell }) => {
            // Rendered into memory: clap_complete panics on a failed write to its writer.
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "secret-run", &mut out);
            write_stdout(&out)?;
            Ok(0)
        }
        Some(Sub::Man) => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .map_err(|e| Error::Internal(format!("cannot render the man page: {e}")))?;
            write_stdout(&out)?;
            Ok(0)
        }
        None => {
            let opts = supervise::Options {
                subreaper: cli.subreaper,
                process_group: cli.process_group,
                cache: !cli.no_cache,
            };
            launch_command(&cli.global, cli.exec, cli.redact, opts, cli.command)
        }
    }
}

fn launch_command(
    global: &Global,
    exec_mode: bool,
    redact_mode: Option<crate::manifest::run::Redact>,
    opts: supervise::Options,
    command: Vec<std::ffi::OsString>,
) -> Result<u8> {
    // Before any secret is fetched: a typo in the command costs nothing and reveals nothing.
    let target = launch::find_command(command)?;
    // Before anything is read: a signal from now on is heard (see `interrupt`).
    let interrupts = if exec_mode {
        Some(Interrupts::block()?)
    } else {
        None
    };
    let plan = load_plan(global, true)?;
    let redact = redact_mode.unwrap_or(plan.run.redact);
    if exec_mode && redact != crate::manifest::run::Redact::Never {
        return Err(Error::Usage(
            "redaction needs secret-run between the command and its output; --exec leaves nothing there: drop --exec, or set `redact = \"never\"`".into(),
        ));
    }
    // Before any secret is fetched: an address in use costs nothing and reveals nothing. So
    // early that the sockets take descriptors 3, 4, … (see `listen`).
    let mut listeners = launch::listen::Listeners::open(&plan.run.listen)?;
    // The same for a file target that cannot be written.
    let mut files = launch::files::Files::prepare(&plan)?;
    // Opened only when the manifest asks for it: the common --exec path stays one file read.
    let mut audit = Audit::open(plan.audit.as_deref(), plan.name.as_deref())?;
    if let Some(interrupts) = interrupts {
        let mut resolution = resolve::resolve_blocking(&plan, global.timeout, &interrupts)
            .inspect_err(|e| audit_interrupted(e, &mut audit))?;
        let issued = std::mem::take(&mut resolution.issued);
        let served = cache::serve(&plan, opts.cache, &mut resolution, &mut audit);
        let vars = match audited_start(resolution, &mut audit) {
            Ok(vars) => vars,
            Err(e) => {
                for event in launch::leases::revoke_blocking(issued) {
                    audit.record(event);
                }
                return Err(e);
            }
        };
        cache::store(&plan, opts.cache, &vars, served.as_ref());
        unkept(&issued, &vars, &mut audit);
        // The command must not inherit blocked signals.
        drop(interrupts);
        if let Err(e) = files.write(&vars) {
            launch::leases::revoke_blocking(issued);
            return Err(e);
        }
        // The command reads them after secret-run is gone.
        files.keep();
        let mut cmd = launch::child_command(
            &target,
            &plan.env,
            &vars,
            &plan.consumed_env(),
            &files.env(),
        );
        drop(vars);
        if !listeners.is_empty() {
            // The command keeps this PID: LISTEN_PID is known now, and nothing forks.
            cmd.env("LISTEN_PID", std::process::id().to_string());
            for (name, value) in listeners.env() {
                cmd.env(name, value);
            }
            let staged = listeners.staged()?;
            // SAFETY: no fork happens with exec; the closure runs in this process right before
            // its execve, and only calls dup2.
            #[allow(unsafe_code)]
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || staged.install());
            }
            // The command serves on the socket files from now on: they stay.
            listeners.keep_files();
        }
        // The command keeps this PID; the log (opened close-on-exec) does not follow it.
        audit.record(Event::Exec {
            pid: std::process::id() as i32,
        });
        drop(audit);
        // Still non-dumpable until the execve, which makes the command dumpable again.
        crate::protect::restore_core_limit()
            .map_err(Error::os("restore the core-file limit for the command"))?;
        let failed = exec::exec(cmd, &target);
        // Still here: the command did not start, and nothing will use what was issued for it.
        launch::leases::revoke_blocking(issued);
        return Err(failed);
    }
    // One runtime for the resolve and the supervision: the HTTP connections a backend opened,
    // and the tokens it obtained, stay usable for renewal and reloads while the child runs.
    let rt = resolve::runtime()?;
    let result = rt.block_on(async {
        // Handlers first: a signal during the first resolve is not lost, and does not end
        // secret-run by its default action with a provider still running.
        let mut signals = supervise::Signals::install(&plan)?;
        let none = resolve::Kept::none();
        let (mut resolution, reload_asked) = signals
            .during_start(resolve::resolve(&plan, global.timeout, &none), &plan)
            .await
            .inspect_err(|e| audit_interrupted(e, &mut audit))?;
        let issued = std::mem::take(&mut resolution.issued);
        let served = cache::serve(&plan, opts.cache, &mut resolution, &mut audit);
        let vars = match audited_start(resolution, &mut audit) {
            Ok(vars) => vars,
            Err(e) => {
                // Nothing will use what was issued before another secret failed.
                for event in launch::leases::revoke_now(issued).await {
                    audit.record(event);
                }
                return Err(e);
            }
        };
        cache::store(&plan, opts.cache, &vars, served.as_ref());
        let redirect = match files
            .write(&vars)
            .and_then(|_| start_redaction(redact, &vars, &plan))
        {
            Ok(redirect) => redirect,
            Err(e) => {
                for event in launch::leases::revoke_now(issued).await {
                    audit.record(event);
                }
                return Err(e);
            }
        };
        let keepers: Vec<_> = plan
            .backends
            .values()
            .map(|b| {
                let b = b.clone();
                tokio::spawn(async move {
                    if let Some(keeping) = b.backend.keep_alive() {
                        keeping.await;
                    }
                })
            })
            .collect();
        let start = supervise::Start {
            values: vars,
            audit,
            signals,
            reload_asked,
            issued,
        };
        let delivery = supervise::Delivery {
            listeners: &listeners,
            files,
            redirect: redirect.as_ref(),
        };
        let supervisor =
            supervise::Supervisor::new(&plan, &target, delivery, start, global.timeout, opts)?;
        let code = supervisor.run().await;
        keepers.iter().for_each(tokio::task::JoinHandle::abort);
        // The child's last output, redacted, before secret-run exits with its code.
        if let Some(redirect) = redirect {
            redirect.finish();
        }
        code
    });
    // A local read stuck past the deadline must not hold the exit back.
    rt.shutdown_background();
    result
}

/// The redaction of the child's output: the values, a warning naming those too short to
/// redact, GitHub Actions' masks, and the pumps.
fn start_redaction(
    mode: crate::manifest::run::Redact,
    vars: &[resolve::ResolvedVar],
    plan: &crate::manifest::plan::Plan,
) -> Result<Option<launch::redirect::Redirect>> {
    if mode == crate::manifest::run::Redact::Never {
        return Ok(None);
    }
    let (redactor, short) = launch::redactor_of(vars, plan);
    if !short.is_empty() {
        tracing::warn!(
            "not redacted, {} bytes or shorter (redact_min_length): {}",
            plan.run.redact_min_length,
            short.join(", ")
        );
    }
    if std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true") {
        // The runner then hides them in every later step too, wrapped by secret-run or not.
        let mut masks = Vec::new();
        for pattern in redactor.patterns() {
            for line in pattern.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                masks.extend_from_slice(b"::add-mask::");
                masks.extend_from_slice(line);
                masks.push(b'\n');
            }
        }
        write_stdout(&masks)?;
        secrecy::zeroize::Zeroize::zeroize(&mut masks);
    }
    launch::redirect::Redirect::start(mode, redactor)
}

/// `--exec`: the command replaces secret-run, so nothing renews or revokes what was issued for
/// it; said once per credential, with when it ends.
fn unkept(issued: &[resolve::Issued], vars: &[resolve::ResolvedVar], audit: &mut Audit) {
    let names = launch::leases::vars_of(vars);
    for i in issued {
        let label = launch::leases::label(&i.lease, &i.request.path);
        tracing::warn!(
            lease = %label,
            "--exec: an issued credential is not renewed or revoked (nothing stays to do it); {}",
            i.lease.about()
        );
        audit.record(launch::leases::issue_event(i, &names));
    }
}

/// Records a start abandoned to a signal.
fn audit_interrupted(e: &Error, audit: &mut Audit) {
    if let Error::Interrupted(signal) = e {
        audit.record(Event::StartInterrupted {
            signal: *signal,
            code: e.exit_code(),
        });
    }
}

/// Records the first resolve, and why the command cannot start when it cannot.
fn audited_start(
    resolution: resolve::Resolution,
    audit: &mut Audit,
) -> Result<Vec<resolve::ResolvedVar>> {
    audit.record(Event::Resolve {
        trigger: Trigger::Start,
        vars: VarRecord::all(&resolution.vars),
    });
    resolution.into_complete().map_err(|failure| {
        audit.record(Event::StartFailed(Failure::of(&failure)));
        Error::Resolve(failure)
    })
}
