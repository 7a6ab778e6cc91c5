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
//! ready = { notify = true, timeout = "30s" }   # or tcp = "127.0.0.1:8080", or cmd = ["curl", …]
//! listen = ["tcp://127.0.0.1:8080", { addr = "unix:/run/app/app.sock", name = "api", mode = "0660" }]
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
    /// Ready when the child itself sends `READY=1` to its `NOTIFY_SOCKET` (sd_notify).
    #[serde(default)]
    pub notify: bool,
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
    /// Sockets secret-run binds once and hands to every child (systemd's `LISTEN_FDS`).
    #[serde(default, deserialize_with = "de_listen")]
    pub listen: Vec<Listen>,
    /// Replace injected values in the child's output (`--redact` overrides it).
    #[serde(default)]
    pub redact: Redact,
    /// Values this long or shorter are not redacted (they would hide ordinary words).
    #[serde(default = "six")]
    pub redact_min_length: usize,
    /// Where a supervising secret-run writes its PID, and beside it (`PIDFILE.status`) how
    /// many reloads it has completed and how the last ended (`secret-run rotate` reads both).
    #[serde(default)]
    pub pidfile: Option<PathBuf>,
    /// New values found by a reload are applied after a random delay within this window, so
    /// that a fleet that sees one rotation together does not restart together.
    #[serde(default, deserialize_with = "crate::duration::de_opt")]
    pub restart_spread: Option<Duration>,
    /// At most `n` replicas hand over at once, coordinated through a Vault KV v2 key.
    pub max_concurrent_restarts: Option<RestartSlots>,
}

/// `[run] max_concurrent_restarts = { n = 2, vault = "NAME", path = "locks/payments" }`: a
/// semaphore of `n` slots kept in a Vault KV v2 secret, written with check-and-set; a slot
/// expires after `ttl`, so that a replica that dies gives its slot back.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RestartSlots {
    pub n: u32,
    /// A `[backends.NAME]` of kind vault.
    pub vault: String,
    /// The secret that holds the slots, relative to that backend's KV mount.
    pub path: String,
    #[serde(default = "two_minutes", deserialize_with = "de_duration")]
    pub ttl: Duration,
}

fn two_minutes() -> Duration {
    Duration::from_secs(120)
}

/// Which of the child's output streams go through redaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Redact {
    /// The child writes to secret-run's stdout and stderr directly.
    #[default]
    Never,
    /// Streams that are not a terminal (pipes, files, CI logs); a terminal is left alone.
    Auto,
    /// Both streams, terminals included.
    Always,
}

fn six() -> usize {
    6
}

/// One socket of `listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub addr: ListenAddr,
    /// In `LISTEN_FDNAMES`; `unknown` when not given, as systemd writes it.
    pub name: Option<String>,
    /// The socket file's mode (unix sockets only).
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(std::net::SocketAddr),
    /// Relative paths are relative to the manifest's directory (resolved by the plan).
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "tcp://{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl ListenAddr {
    /// `tcp://127.0.0.1:8080`, `tcp://[::]:8443`, `unix:/run/app/app.sock`.
    pub fn parse(text: &str) -> Result<ListenAddr, crate::error::Invalid> {
        if let Some(rest) = text.strip_prefix("tcp://") {
            let addr: std::net::SocketAddr = rest.parse().map_err(|_| {
                format!("`{text}`: write an IP address and a port, e.g. tcp://127.0.0.1:8080 or tcp://[::]:8443 (names are not resolved)")
            })?;
            if addr.port() == 0 {
                return Err(format!(
                    "`{text}`: port 0 would be a different port on every run; name the port"
                )
                .into());
            }
            return Ok(ListenAddr::Tcp(addr));
        }
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!(
                    "`{text}`: name the socket's path, e.g. unix:/run/app/app.sock"
                )
                .into());
            }
            // sun_path holds 108 bytes, its NUL included.
            if path.len() > 107 {
                return Err(format!("`{text}`: a unix socket path is at most 107 bytes").into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        Err(format!("`{text}`: an address starts with tcp:// or unix:").into())
    }
}

fn de_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Listen>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Addr(String),
        Table(Table),
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Table {
        addr: String,
        name: Option<String>,
        mode: Option<String>,
    }
    use serde::de::Error as _;
    let entries = Vec::<Entry>::deserialize(d).map_err(|_| {
        D::Error::custom("`listen` is a list of addresses (\"tcp://127.0.0.1:8080\", \"unix:/run/app.sock\") or of tables `{ addr = \"…\", name = \"http\", mode = \"0660\" }`")
    })?;
    entries
        .into_iter()
        .map(|e| {
            let (addr, name, mode) = match e {
                Entry::Addr(a) => (a, None, None),
                Entry::Table(t) => (t.addr, t.name, t.mode),
            };
            let addr = ListenAddr::parse(&addr).map_err(|e| D::Error::custom(format!("listen: {e}")))?;
            if let Some(n) = &name {
                if n.is_empty() || n.len() > 255 || !n.chars().all(|c| c.is_ascii_graphic() && c != ':') {
                    return Err(D::Error::custom(format!(
                        "listen: name `{n}`: at most 255 printable ASCII characters, without `:` (LISTEN_FDNAMES separates names with it)"
                    )));
                }
            }
            let mode = match mode {
                None => None,
                Some(m) => {
                    if !matches!(addr, ListenAddr::Unix(_)) {
                        return Err(D::Error::custom(format!("listen: `mode` is for unix sockets ({addr})")));
                    }
                    Some(u32::from_str_radix(m.trim_start_matches("0o"), 8).ok().filter(|m| *m <= 0o777).ok_or_else(|| {
                        D::Error::custom(format!("listen: mode `{m}` is not an octal file mode such as \"0660\""))
                    })?)
                }
            };
            Ok(Listen { addr, name, mode })
        })
        .collect()
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
            listen: Vec::new(),
            redact: Redact::Never,
            redact_min_length: six(),
            pidfile: None,
            restart_spread: None,
            max_concurrent_restarts: None,
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
        if self.on_change == OnChange::Overlap && self.ready.is_none() {
            problems.push(
                "`on_change = \"overlap\"` needs `ready = { notify = true }`, `{ tcp = \"HOST:PORT\" }` or `{ cmd = [...] }`, to know when the new child can take over".into(),
            );
        }
        if let Some(r) = &self.ready {
            let ways =
                usize::from(r.tcp.is_some()) + usize::from(r.cmd.is_some()) + usize::from(r.notify);
            if ways != 1 {
                problems.push("`ready` takes one of `notify = true`, `tcp` or `cmd`".into());
            }
            if r.cmd.as_ref().is_some_and(Vec::is_empty) {
                problems.push("`ready.cmd` cannot be empty".into());
            }
            if let Some(tcp) = &r.tcp {
                if let Some(shared) = self.listen.iter().find(|l| probe_reaches(tcp, &l.addr)) {
                    problems.push(format!(
                        "`ready.tcp = \"{tcp}\"` reaches {}, a socket of `listen` that every child shares: the old child would answer the probe for the new one, which proves nothing. Use `ready = {{ notify = true }}`, or a `cmd` that asks the new child (it gets SECRET_RUN_CHILD_PID)",
                        shared.addr
                    ));
                }
            }
        }
        for (i, l) in self.listen.iter().enumerate() {
            if self.listen[..i].iter().any(|o| o.addr == l.addr) {
                problems.push(format!("`listen` names {} twice", l.addr));
            }
        }
        problems.into_iter().map(crate::error::Invalid).collect()
    }
}

/// Whether a TCP probe of `probe` would be answered through the listening socket `listen`.
fn probe_reaches(probe: &str, listen: &ListenAddr) -> bool {
    let ListenAddr::Tcp(l) = listen else {
        return false;
    };
    let Ok(p) = probe.parse::<std::net::SocketAddr>() else {
        // A name: `localhost:PORT` on a shared port is the same mistake.
        return probe
            .rsplit_once(':')
            .is_some_and(|(_, port)| port == l.port().to_string());
    };
    p.port() == l.port()
        && (l.ip().is_unspecified()
            || p.ip() == l.ip()
            || p.ip().is_loopback() && l.ip().is_loopback())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    pub path: PathBuf,
}

/// `[cache]`: the encrypted last-known-good values, served at start during an outage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The encrypted file; relative paths are relative to the manifest's directory.
    pub path: PathBuf,
    /// An age identity (`AGE-SECRET-KEY-1…`), as `secret-run cache keygen` writes it.
    pub key_file: PathBuf,
    /// Values confirmed longer ago than this are never served.
    #[serde(default = "one_hour", deserialize_with = "crate::duration::de")]
    pub max_age: Duration,
}

fn one_hour() -> Duration {
    Duration::from_secs(3600)
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
