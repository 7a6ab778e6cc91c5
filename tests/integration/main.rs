//! The integration tests: every test runs the real `secret-run` binary against real files, real
//! programs and real processes, in a temporary directory of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "aws")]
mod aws;
mod cache;
mod check_init;
mod dynamic;
mod exit_codes;
mod files;
mod hardening;
mod kept;
mod launch;
mod layers;
mod listen;
mod local_backends;
mod manifest_errors;
#[cfg(feature = "aws")]
mod moto;
mod no_leak;
#[cfg(feature = "vault")]
mod openbao;
mod operate;
mod postgres;
mod redact;
mod rotate;
mod rotation;
mod sops;
mod support;
#[cfg(feature = "vault")]
mod vault;
