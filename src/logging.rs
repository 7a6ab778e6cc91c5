//! Logging: tracing to stderr (stdout belongs to the child, and to `check`'s report).
//! `-q` errors only, default warnings, `-v` info, `-vv` debug, `-vvv` trace; RUST_LOG overrides.
//! Log lines name variables, backends and paths; no code path logs a value or a credential.

use tracing_subscriber::EnvFilter;

const CAPPED: &str = "aws_smithy_runtime=debug,aws_smithy_runtime_api=debug,aws_sigv4=debug,\
aws_config=debug,aws_runtime=debug,aws_smithy_http_client=debug,hyper=debug,hyper_util=debug,\
reqwest=debug,h2=debug,rustls=debug";

pub fn init(verbose: u8, quiet: bool) {
    // Other crates speak one level lower than secret-run itself: the AWS SDK, for one, warns at
    // length about every credential and region source it tries, which secret-run's own error
    // already sums up in one sentence.
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "error,secret_run=warn",
        (false, 1) => "warn,secret_run=info",
        (false, 2) => "info,secret_run=debug",
        (false, _) => "trace",
    };
    let spec = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() && EnvFilter::try_new(&spec).is_ok() => spec,
        _ => level.to_owned(),
    };
    // At trace level the HTTP and AWS crates dump whole requests, headers included: an AWS
    // session token, a signed Authorization header. They stop at debug, whatever is asked.
    // Only where trace is asked for: added to a coarser filter, these would raise the level.
    let filter = if spec.contains("trace") {
        EnvFilter::new(format!("{spec},{CAPPED}"))
    } else {
        EnvFilter::new(spec)
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: in a log file or a pipe they are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
