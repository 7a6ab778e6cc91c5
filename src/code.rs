//! Exit codes of secret-run's own failures. The child's code passes through unchanged, and a
//! child killed by signal N gives 128 + N. The numbers follow `sysexits.h` where one fits; the
//! table is documented in `docs/lifecycle.md`.

/// Bad command line (unknown option, no command after `--`).
pub const USAGE: u8 = 64;
/// A required secret is missing, or its value cannot be used (not JSON for `key`, NUL byte, ...).
pub const SECRET_MISSING: u8 = 65;
/// A backend could not be reached or did not answer before the deadline.
pub const UNAVAILABLE: u8 = 69;
/// An internal error: a bug in secret-run, and nothing else.
pub const SOFTWARE: u8 = 70;
/// The operating system refused what secret-run needs for itself (a thread, a signal handler,
/// a pipe, becoming a subreaper): not a bug, and not the secrets' fault.
pub const OS_ERROR: u8 = 71;
/// `init` could not write its files (exists without `--force`, or the write failed).
pub const CANT_CREATE: u8 = 73;
/// secret-run's own output could not be written: stdout closed (a pipe whose reader left)
/// or full (`/dev/full`, a full disk).
pub const IO_ERROR: u8 = 74;
/// A write lost a race (`put`: the secret changed since it was read; check-and-set): read
/// again and retry.
pub const TEMP_FAIL: u8 = 75;
/// A backend refused access (file permissions, a policy).
pub const PERMISSION_DENIED: u8 = 77;
/// The manifest is missing or invalid.
pub const CONFIG: u8 = 78;
/// The command was found but cannot be executed.
pub const CANNOT_EXECUTE: u8 = 126;
/// The command was not found.
pub const COMMAND_NOT_FOUND: u8 = 127;
