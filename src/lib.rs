//! secret-run: a launcher that takes secrets out of `.env` files and puts them where they belong.
//!
//! The flow runs one way. The command line and the manifest (`secrets.toml`) become a *plan*:
//! every variable is bound to a backend, a full path and an optional key ([`manifest`]). The
//! *resolver* asks every backend in use at once, one batch each, under one deadline, and collects
//! every problem ([`resolve`]). Values are `secrecy::SecretString` from the moment a backend reads
//! them ([`secret`], [`backend`]); only the *launcher* exposes them, when it builds the child's
//! environment, and then either replaces secret-run with the command (`--exec`) or supervises it,
//! forwarding signals, reloading on rotation and passing its exit code through ([`launch`]).
//!
//! Errors name the file and line, or the variable, backend and path, and never a value; each maps
//! to a documented exit code ([`code`]).

pub mod app;
pub mod audit;
pub mod backend;
pub mod cache;
pub mod cli;
pub mod code;
pub mod duration;
pub mod error;
pub mod failure;
pub mod fsread;
#[cfg(test)]
mod fuzz;
pub mod interrupt;
pub mod launch;
pub mod logging;
pub mod manifest;
pub mod output;
pub mod protect;
pub mod redact;
pub mod resolve;
pub mod secret;
pub mod template;
