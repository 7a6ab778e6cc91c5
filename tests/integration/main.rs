//! The integration tests: every test runs the real `secret-run` binary against real files, real
//! programs and real processes, in a temporary directory of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod aws;
mod check_init;
mod exit_codes;
mod kept;
mod launch;
mod local_backends;
mod manifest_errors;
mod moto;
mod no_leak;
mod openbao;
mod rotation;
mod support;
mod vault;
