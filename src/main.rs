//! The `secret-run` binary: parse the command line, set up logging, run, map the outcome to an
//! exit code. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use secret_run::cli::Cli;
use secret_run::error::code;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { code::USAGE } else { 0 });
        }
    };
    secret_run::logging::init(cli.global.verbose, cli.global.quiet);
    match secret_run::app::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("secret-run: error: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::from(err.exit_code())
        }
    }
}
