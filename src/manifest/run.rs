//! The manifest's `[run]` and `[audit]` tables: what a supervised run does when secrets rotate,
//! when the child exits, and where it records what happened.
//!
//! ```toml
//! [run]
//! reload_signal = "SIGHUP"       # what secret-run itself treats as "fetch again"
//! on_change = "restart"          # restart | signal | overlap
//! child_signal = "SIGHUP"        # sent to the child when on_change = "signal"
//! stop_signal = "SIGTERM"
//! stop_timeout = "10s"           # then SIGKILL
//! restart = "on-change"          # or "always"
//! watch = "5m"                   # poll the backends for rotation, ±10% splay
//! min_restart_interval = "5s"    # restarts are rate-limited; storms coalesce
//! max_stale = "1h"               # how long last-known-good values may serve a restart
//! restart_on_exit = "never"      # or "on-failure"
//! ready = { tcp = "127.0.0.1:8080", timeout = "30s" }   # or cmd = ["curl", "-fs", "…"]
//!
//! [audit]
//! path = "/var/log/secret-run/audit.jsonl"
//! ```

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnChange {
    #[default]
    Restart,
    Signal,
    Overlap,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    #[default]
    OnChange,
    Always,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartOnExit {
    #[default]
    Never,
    OnFailure,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    /// Ready when a TCP connection to this address succeeds.
    pub tcp: Option<String>,
    /// Ready when this program exits 0 (run again until it does).
    pub cmd: Option<Vec<String>>,
    #[serde(default = "thirty_s", deserialize_with = "de_duration")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    #[serde(default = "sighup", deserialize_with = "de_signal")]
    pub reload_signal: Signal,
    #[serde(default)]
    pub on_change: OnChange,
    #[serde(default = "sighup", deserialize_with = "de_signal")]
    pub child_signal: Signal,
    #[serde(default = "sigterm", deserialize_with = "de_signal")]
    pub stop_signal: Signal,
    #[serde(default = "ten_s", deserialize_with = "de_duration")]
    pub stop_timeout: Duration,
    #[serde(default)]
    pub restart: Restart,
    #[serde(default, deserialize_with = "crate::duration::de_opt")]
    pub watch: Option<Duration>,
    #[serde(default = "five_s", deserialize_with = "de_duration")]
    pub min_restart_interval: Duration,
    #[serde(default = "one_h", deserialize_with = "de_duration")]
    pub max_stale: Duration,
    pub ready: Option<Ready>,
    #[serde(default)]
    pub restart_on_exit: RestartOnExit,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            reload_signal: Signal::SIGHUP,
            on_change: OnChange::Restart,
            child_signal: Signal::SIGHUP,
            stop_signal: Signal::SIGTERM,
            stop_timeout: ten_s(),
            restart: Restart::OnChange,
            watch: None,
            min_restart_interval: five_s(),
            max_stale: one_h(),
            ready: None,
            restart_on_exit: RestartOnExit::Never,
        }
    }
}

impl RunConfig {
    pub fn validate(&self) -> Vec<crate::error::Invalid> {
        let mut problems: Vec<String> = Vec::new();
        for (field, sig) in [
            ("reload_signal", self.reload_signal),
            ("child_signal", self.child_signal),
            ("stop_signal", self.stop_signal),
        ] {
            if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) && field == "reload_signal" {
                problems.push(format!(
                    "`{field} = \"{sig}\"` cannot be caught; choose e.g. SIGHUP"
                ));
            }
            if matches!(
                sig,
                Signal::SIGCHLD
                    | Signal::SIGSEGV
                    | Signal::SIGBUS
                    | Signal::SIGILL
                    | Signal::SIGFPE
            ) {
                problems.push(format!(
                    "`{field} = \"{sig}\"` is not usable here; choose e.g. SIGHUP or SIGTERM"
                ));
            }
        }
        if self.on_change == OnChange::Overlap {
            match &self.ready {
                None => problems.push(
                    "`on_change = \"overlap\"` needs `ready = { tcp = \"HOST:PORT\" }` or `ready = { cmd = [...] }`, to know when the new child can take over".into(),
                ),
                Some(r) if r.tcp.is_some() == r.cmd.is_some() => problems.push(
                    "`ready` takes one of `tcp` or `cmd`".into(),
                ),
                Some(r) if r.cmd.as_ref().is_some_and(Vec::is_empty) => {
                    problems.push("`ready.cmd` cannot be empty".into());
                }
                Some(_) => {}
            }
        }
        problems.into_iter().map(crate::error::Invalid).collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    pub path: PathBuf,
}

fn sighup() -> Signal {
    Signal::SIGHUP
}
fn sigterm() -> Signal {
    Signal::SIGTERM
}
fn ten_s() -> Duration {
    Duration::from_secs(10)
}
fn five_s() -> Duration {
    Duration::from_secs(5)
}
fn thirty_s() -> Duration {
    Duration::from_secs(30)
}
fn one_h() -> Duration {
    Duration::from_secs(3600)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    crate::duration::parse(&text).map_err(serde::de::Error::custom)
}

/// `"SIGHUP"`, `"HUP"` or `"sighup"`.
pub fn parse_signal(text: &str) -> Result<Signal, crate::error::Invalid> {
    let upper = text.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| {
        format!("`{text}` is not a signal name; write e.g. SIGHUP, SIGTERM, SIGUSR1").into()
    })
}

fn de_signal<'de, D: Deserializer<'de>>(d: D) -> Result<Signal, D::Error> {
    let text = String::deserialize(d)?;
    parse_signal(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGHUP").unwrap(), Signal::SIGHUP);
        assert_eq!(parse_signal("usr1").unwrap(), Signal::SIGUSR1);
        assert!(parse_signal("SIGNOPE").is_err());
    }

    #[test]
    fn overlap_needs_ready() {
        let c = RunConfig {
            on_change: OnChange::Overlap,
            ..RunConfig::default()
        };
        assert_eq!(c.validate().len(), 1);
    }
}
