//! The `secret-run` binary: parse the command line, set up logging, run, map the outcome to an
//! exit code. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use secret_run::cli::Cli;
use secret_run::code;
use secret_run::output::warn_line;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version go to stdout: a stdout that cannot take them is an I/O error.
            let printed = e.print();
            return ExitCode::from(match (e.use_stderr(), printed) {
                (true, _) => code::USAGE,
                (false, Ok(())) => 0,
                (false, Err(_)) => code::IO_ERROR,
            });
        }
    };
    secret_run::logging::init(cli.global.verbose, cli.global.quiet);
    match secret_run::protect::lock_down().and_then(|()| secret_run::app::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // Every message carries its cause: printed once, whole.
            warn_line(&format!("secret-run: error: {err}"));
            ExitCode::from(err.exit_code())
        }
    }
}
