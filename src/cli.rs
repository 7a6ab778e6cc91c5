//! The command line. Doc comments here are the `--help` text.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

const AFTER_HELP: &str = "\
Examples:
  secret-run -- ./service --port 8080        resolve secrets.toml, run and supervise the service
  SECRET_BACKEND=dotenv secret-run -- make   the same manifest, values from .env (no server)
  secret-run --exec -- pytest                replace secret-run with the command (CI steps)
  secret-run --redact -- pytest              values in the command's output shown as [redacted:NAME]
  secret-run check                           resolve all, one line per variable, no values
  secret-run scan --staged                   no value in what is about to be committed
  secret-run init --from-dotenv .env         start a manifest from an existing .env

Exit codes: the command's own code; 128+N when signal N killed it; 64 usage; 65 secret missing
or unusable; 69 backend unavailable; 70 a bug; 71 the OS refused a thread, a pipe, a handler,
a listen address; 73 cannot write (init, audit log, a file); 74 cannot write stdout; 77
permission denied; 78 manifest invalid; 126 command not executable; 127 command not found.
`scan` exits 1 when it finds a value.
See docs/lifecycle.md.";

/// Run a command with its secrets in its environment, fetched from the backend the manifest
/// (secrets.toml) names: .env and the process environment for development; Vault/OpenBao, AWS
/// Secrets Manager, SSM Parameter Store, mounted secret files or an external program in
/// production. SIGHUP fetches again and restarts the command when a value changed.
#[derive(Debug, Parser)]
#[command(
    name = "secret-run",
    version,
    after_help = AFTER_HELP,
    override_usage = "secret-run [OPTIONS] -- CMD [ARGS]...\n       secret-run [OPTIONS] <check|get|export|put|migrate|rotate|scan|init|cache|completions>"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,

    /// Replace secret-run with the command (execve: same PID, nothing stays resident) instead of
    /// supervising it. For CI steps, and images that already have an init.
    #[arg(long)]
    pub exec: bool,

    /// Reap the orphans the command leaves, as an init would (PR_SET_CHILD_SUBREAPER). Implied
    /// when secret-run is PID 1.
    #[arg(long)]
    pub subreaper: bool,

    /// Run the command in a process group of its own, and send forwarded and stop signals to
    /// the whole group.
    #[arg(long)]
    pub process_group: bool,

    /// Replace every injected value in the command's output with [redacted:NAME]: `auto` (the
    /// default of the flag) for streams that are not a terminal, `always`, or `never`.
    /// Overrides `[run] redact`.
    #[arg(long, value_name = "WHEN", num_args = 0..=1, default_missing_value = "auto", value_enum)]
    pub redact: Option<crate::manifest::run::Redact>,

    /// Neither read nor write the `[cache]` of last-known-good values: a backend outage at
    /// start fails the start.
    #[arg(long)]
    pub no_cache: bool,

    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD", num_args = 0..)]
    pub command: Vec<OsString>,

    #[command(subcommand)]
    pub sub: Option<Sub>,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The manifest to read.
    #[arg(
        short = 'f',
        long,
        env = "SECRET_RUN_MANIFEST",
        value_name = "PATH",
        default_value = crate::manifest::DEFAULT_MANIFEST,
        global = true
    )]
    pub manifest: PathBuf,

    /// Send every secret that names no backend to this backend (e.g. `dotenv` on a laptop).
    #[arg(long, env = "SECRET_BACKEND", value_name = "NAME", global = true)]
    pub backend: Option<String>,

    /// The environment name that replaces `{env}` in backend prefixes (dev, staging, prod).
    #[arg(
        long = "env",
        env = "SECRET_RUN_ENV",
        value_name = "NAME",
        global = true
    )]
    pub env_name: Option<String>,

    /// The deadline for resolving every secret (e.g. 10s, 1m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,

    /// More log output on stderr (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Validate the manifest and resolve every secret, printing one line per variable (never a
    /// value). Exits 0 only when every required secret resolves: the CI gate and the dry run.
    Check {
        /// Print a JSON document instead of a table.
        #[arg(long)]
        json: bool,
        /// Also read endpoints that create credentials (database/creds, pki/issue): each is
        /// issued once, shown (lease, renewable, validity) and revoked at once. Without it they
        /// are listed, not read: a plain check never mints a database user.
        #[arg(long)]
        issue: bool,
    },
    /// Write a starter manifest (to -f, default secrets.toml).
    Init {
        /// Map every key of this .env to a secret, and write a .env.template with the names only.
        #[arg(long, value_name = "FILE")]
        from_dotenv: Option<PathBuf>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Search files for any secret value (and its encodings): prints `path:line: NAME`, never a
    /// value. Exits 1 when something is found, 0 when clean. Honours .gitignore.
    Scan {
        /// Files and directories to search (default: the current directory).
        #[arg(value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Search what is staged in git (the index), for a pre-commit hook.
        #[arg(long, conflicts_with = "paths")]
        staged: bool,
        /// Print a JSON document instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Print one variable's value and a newline on stdout, resolved as a run would resolve it.
    /// Audited (`get`). For a tool that takes a value on its command line or stdin.
    Get {
        /// The variable, as the manifest names it.
        name: String,
        /// No newline after the value.
        #[arg(short = 'n')]
        no_newline: bool,
    },
    /// Write every resolved value in a format other tools read: dotenv (read back the same by
    /// dotenvy and python-dotenv), json, shell (`export NAME='…'`), github-env (appended to
    /// $GITHUB_ENV, masked first). To stdout, or to a new file (0600) with -o.
    Export {
        #[arg(long, value_enum, default_value = "dotenv")]
        format: ExportFormat,
        /// Write to this file (created 0600; an existing one only with --force).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[arg(long)]
        force: bool,
    },
    /// Write a new value for one variable to its entry's backend, at its path (one field with
    /// `key`), as a new version. The value comes from stdin (or --from-file), never from the
    /// command line; one trailing newline is dropped. Vault KV v2 writes check-and-set.
    Put {
        name: String,
        /// Read the value from this file instead of stdin.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// Vault KV v2: write only if the secret is still at this version (default: the
        /// version read just before writing).
        #[arg(long, value_name = "VERSION")]
        cas: Option<u64>,
    },
    /// Copy every value from where it resolves today (or --from) to another backend, at each
    /// entry's path there. Existing values are kept unless --overwrite. Prints names and
    /// outcomes, never values.
    Migrate {
        /// The backend to write to (a name under [backends], or a built-in one).
        #[arg(long, value_name = "BACKEND")]
        to: String,
        /// Read every entry that names no backend from this one (as --backend does).
        #[arg(long, value_name = "BACKEND")]
        from: Option<String>,
        /// List what would be written, and where; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replace values that are already there.
        #[arg(long)]
        overwrite: bool,
        /// Print a JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Rotate one value: write the new one as a pending version (Vault KV v2: the newest
    /// version; Secrets Manager: AWSPENDING), have the running supervisor reload, run --verify
    /// with the new value, then promote it, or roll back and reload again. Exits 0 when the new
    /// value is in place, 1 when the rotation was rolled back.
    Rotate {
        name: String,
        /// Read the new value from stdin (one trailing newline dropped).
        #[arg(
            long,
            conflicts_with = "generate",
            required_unless_present = "generate"
        )]
        stdin: bool,
        /// Generate a new value of this many random bytes.
        #[arg(long, value_name = "BYTES")]
        generate: Option<usize>,
        /// How generated bytes are written.
        #[arg(long, value_enum, default_value = "base64url")]
        encoding: GeneratedEncoding,
        /// The supervisor's pidfile (default: the manifest's `[run] pidfile`); its status file
        /// says when the reload is done.
        #[arg(long, value_name = "FILE")]
        pidfile: Option<PathBuf>,
        /// The supervisor's PID, instead of reading it from the pidfile.
        #[arg(long, value_name = "PID")]
        pid: Option<i32>,
        /// A command that must succeed with the new value in its environment (`sh -c`).
        #[arg(long, value_name = "CMD")]
        verify: Option<String>,
        /// How long to wait for the supervisor to report a reload [default: 60s, plus the
        /// manifest's `restart_spread`].
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        reload_timeout: Option<Duration>,
        /// Print the steps; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The encrypted cache of last-known-good values (`[cache]` in the manifest).
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GeneratedEncoding {
    Base64url,
    Hex,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Dotenv,
    Json,
    Shell,
    GithubEnv,
}

#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// Write a new age identity for `[cache] key_file` (mode 0600) and print its recipient.
    Keygen {
        /// Where to write it (default: the manifest's `[cache] key_file`).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Replace an existing file (the cache written with the old key becomes unreadable).
        #[arg(long)]
        force: bool,
    },
    /// For each variable: whether the cache holds it, how old it is, and whether it would be
    /// served during an outage. Never a value.
    Status,
    /// Remove the cache file.
    Clear,
}

fn parse_duration(s: &str) -> Result<Duration, crate::error::Invalid> {
    crate::duration::parse(s)
}
