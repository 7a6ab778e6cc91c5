//! Logging: tracing to stderr (stdout belongs to the child, and to `check`'s report).
//! `-q` errors only, default warnings, `-v` info, `-vv` debug, `-vvv` trace; RUST_LOG overrides.
//! Log lines name variables, backends and paths; no code path logs a value or a credential.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

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
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|spec| !spec.is_empty())
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new(level));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(|| crate::output::Escaped(std::io::stderr()))
        // No colour codes: the writer escapes every control character, ESC included, so that
        // a name or a server's message cannot drive the terminal.
        .with_ansi(false)
        .with_target(false)
        .with_filter(cap());
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init();
}

/// At trace level the HTTP and AWS crates dump whole requests, headers included: an AWS session
/// token, a signed Authorization header. Every crate but secret-run stops at debug, whatever
/// RUST_LOG asks and however it spells it (`TRACE`, `5`, `crate::module=trace`, span filters):
/// this is a second filter, applied after RUST_LOG's, that no directive can widen.
fn cap() -> Targets {
    Targets::new()
        .with_default(LevelFilter::DEBUG)
        .with_target("secret_run", LevelFilter::TRACE)
}
