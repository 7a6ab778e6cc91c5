//! The integration tests: every test runs the real `secret-run` binary against real files, real
//! programs and real processes, in a temporary directory of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod check_init;
mod exit_codes;
mod launch;
mod local_backends;
mod manifest_errors;
mod no_leak;
mod openbao;
mod support;
mod vault;
