//! What each command does, from parsed arguments to an exit code.

use std::io::Write;

use clap::CommandFactory;

use crate::audit::Audit;
use crate::cli::{Cli, Global, Sub};
use crate::error::{Error, Result};
use crate::launch::{self, exec, supervise};
use crate::manifest::{self, plan};
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
        Some(Sub::Check { json }) => crate::check::run(&cli.global, json),
        Some(Sub::Init { from_dotenv, force }) => {
            crate::init::run(&cli.global.manifest, from_dotenv.as_deref(), force)
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
                .map_err(|e| Error::Internal(e.to_string()))?;
            write_stdout(&out)?;
            Ok(0)
        }
        None => {
            let opts = supervise::Options {
                subreaper: cli.subreaper,
                process_group: cli.process_group,
            };
            launch_command(&cli.global, cli.exec, opts, cli.command)
        }
    }
}

fn launch_command(
    global: &Global,
    exec_mode: bool,
    opts: supervise::Options,
    command: Vec<std::ffi::OsString>,
) -> Result<u8> {
    // Before any secret is fetched: a typo in the command costs nothing and reveals nothing.
    let target = launch::find_command(command)?;
    let plan = load_plan(global)?;
    // Opened only when the manifest asks for it: the common --exec path stays one file read.
    let mut audit =
        Audit::open(plan.audit.as_deref(), plan.name.as_deref()).map_err(Error::Audit)?;
    if exec_mode {
        let resolution = resolve::resolve_blocking(&plan, global.timeout)?;
        let vars = audited_start(resolution, &mut audit)?;
        let cmd = launch::child_command(&target, &plan.env, &vars, &plan.consumed_env());
        drop(vars);
        // The command keeps this PID; the log (opened close-on-exec) does not follow it.
        audit.event("exec", serde_json::json!({ "pid": std::process::id() }));
        drop(audit);
        return Err(exec::exec(cmd, &target));
    }
    // One runtime for the resolve and the supervision: the HTTP connections a backend opened,
    // and the tokens it obtained, stay usable for renewal and reloads while the child runs.
    let rt = runtime()?;
    let result = rt.block_on(async {
        let resolution = resolve::resolve(&plan, global.timeout).await;
        let vars = audited_start(resolution, &mut audit)?;
        let keepers: Vec<_> = plan
            .backends
            .values()
            .map(|b| {
                let b = std::sync::Arc::clone(b);
                tokio::spawn(async move { b.keep_alive().await })
            })
            .collect();
        let supervisor =
            supervise::Supervisor::new(&plan, &target, vars, audit, global.timeout, opts)?;
        let code = supervisor.run().await;
        keepers.iter().for_each(tokio::task::JoinHandle::abort);
        code
    });
    // A local read stuck past the deadline must not hold the exit back.
    rt.shutdown_background();
    result
}

/// Records the first resolve, and why the command cannot start when it cannot.
fn audited_start(
    resolution: resolve::Resolution,
    audit: &mut Audit,
) -> Result<Vec<resolve::ResolvedVar>> {
    audit.resolve("start", &resolution.vars);
    resolution.into_complete().map_err(|failure| {
        audit.event("start-failed", crate::audit::failure(&failure));
        Error::Resolve(failure)
    })
}

/// Writes all of `bytes` to stdout; a closed or full stdout is `Error::Output` (74).
pub fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(Error::Output)
}

pub fn load_plan(global: &Global) -> Result<plan::Plan> {
    let manifest = manifest::load(&global.manifest)?;
    let opts = plan::PlanOptions {
        backend_override: global.backend.clone().filter(|b| !b.is_empty()),
        env_name: global.env_name.clone().filter(|e| !e.is_empty()),
    };
    plan::build(manifest, &opts)
}

/// One thread: resolving is I/O-bound and a single-threaded runtime starts in microseconds.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the async runtime: {e}")))
}
