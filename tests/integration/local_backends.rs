//! The env, dotenv, file and command backends, through the real binary and a real child.

use crate::support::{Project, child_env, script};

#[test]
fn dotenv_values_keys_pointers_defaults_and_optional() {
    let p = Project::with_manifest(
        r#"
[secrets]
DATABASE_URL = "database/url"
DB_USER = { path = "db/creds", key = "user" }
DB_PASSWORD = { path = "db/creds", key = "/primary/password" }
DB_PORT = { path = "db/creds", key = "/primary/port" }
LOG_LEVEL = { path = "log/level", default = "info" }
SENTRY_DSN = { path = "sentry/dsn", optional = true }
"#,
    );
    p.write(
        ".env",
        "DATABASE_URL=postgres://u:p@h/db\nexport DB_CREDS='{\"user\":\"app\",\"primary\":{\"password\":\"pw 1\",\"port\":5432}}'\n",
    );
    // SENTRY_DSN in secret-run's own environment must not leak through: absent means unset.
    let env = child_env(&p, &[], &[("SENTRY_DSN", "inherited")]);
    assert_eq!(env["DATABASE_URL"], "postgres://u:p@h/db");
    assert_eq!(env["DB_USER"], "app");
    assert_eq!(env["DB_PASSWORD"], "pw 1");
    assert_eq!(env["DB_PORT"], "5432");
    assert_eq!(env["LOG_LEVEL"], "info");
    assert!(
        !env.contains_key("SENTRY_DSN"),
        "optional absent must be unset"
    );
    assert!(env.contains_key("PATH"), "inherits by default");
}

#[test]
fn secret_backend_and_flag_override_the_default() {
    let p = Project::with_manifest(
        "default_backend = \"mounted\"\n[backends.mounted]\nkind = \"file\"\ndir = \"secrets\"\n[secrets]\nAPI_KEY = \"api/key\"\nPINNED = { backend = \"mounted\", path = \"pinned\" }\n",
    );
    p.write("secrets/api/key", "from-file\n");
    p.write("secrets/pinned", "pinned-file");
    p.write(".env", "API_KEY=from-dotenv\n");
    let env = child_env(&p, &[], &[("API_KEY", "from-env")]);
    assert_eq!(env["API_KEY"], "from-file");
    let env = child_env(&p, &[], &[("SECRET_BACKEND", "dotenv")]);
    assert_eq!(env["API_KEY"], "from-dotenv");
    assert_eq!(
        env["PINNED"], "pinned-file",
        "an entry naming its backend keeps it"
    );
    let env = child_env(
        &p,
        &["--backend", "env"],
        &[("API_KEY", "from-env"), ("SECRET_BACKEND", "dotenv")],
    );
    assert_eq!(
        env["API_KEY"], "from-env",
        "--backend wins over SECRET_BACKEND"
    );
}

#[test]
fn env_backend_maps_paths_to_names() {
    let p = Project::with_manifest(
        "default_backend = \"env\"\n[secrets]\nURL = \"database/url\"\nKEY = \"stripe-api.key\"\n",
    );
    let env = child_env(&p, &[], &[("DATABASE_URL", "u"), ("STRIPE_API_KEY", "k")]);
    assert_eq!(env["URL"], "u");
    assert_eq!(env["KEY"], "k");
    p.run(&["--", "true"])
        .code(65)
        .stderr_has("variable `DATABASE_URL` is not set");
}

#[test]
fn prefix_with_env_name() {
    let p = Project::with_manifest(
        "default_backend = \"local\"\n[backends.local]\nkind = \"dotenv\"\npath = \"config/dev.env\"\nprefix = \"{env}/\"\n[secrets]\nDATABASE_URL = \"database/url\"\n",
    );
    p.write(
        "config/dev.env",
        "PROD_DATABASE_URL=prod-url\nSTAGING_DATABASE_URL=staging-url\n",
    );
    assert_eq!(
        child_env(&p, &["--env", "prod"], &[])["DATABASE_URL"],
        "prod-url"
    );
    assert_eq!(
        child_env(&p, &[], &[("SECRET_RUN_ENV", "staging")])["DATABASE_URL"],
        "staging-url"
    );
    p.run(&["--", "true"])
        .code(78)
        .stderr_has("secrets.toml:2:11: [backends.local]: prefix `{env}/` uses {env}")
        .stderr_has("pass --env NAME or set SECRET_RUN_ENV");
}

#[test]
fn file_backend_reads_strips_one_newline_and_refuses_escapes() {
    let p = Project::with_manifest(
        "default_backend = \"m\"\n[backends.m]\nkind = \"file\"\ndir = \"run\"\n[secrets]\nA = \"a\"\nB = \"nested/b\"\nK8S = \"k8s\"\n",
    );
    p.write("run/a", "alpha\n\n");
    p.write("run/nested/b", "beta\r\n");
    // Kubernetes layout: the name is a symlink into ..data, which stays inside the directory.
    p.write("run/..2026_11_25/k8s", "kube");
    std::os::unix::fs::symlink("..2026_11_25", p.path("run/..data")).unwrap();
    std::os::unix::fs::symlink("..data/k8s", p.path("run/k8s")).unwrap();
    let env = child_env(&p, &[], &[]);
    assert_eq!(
        env["A"], "alpha\n",
        "exactly one trailing newline is stripped"
    );
    assert_eq!(env["B"], "beta");
    assert_eq!(env["K8S"], "kube");

    // A symlink pointing out of the directory is refused (permission denied, 77).
    p.write("outside", "not yours");
    std::os::unix::fs::symlink(p.path("outside"), p.path("run/escape")).unwrap();
    p.write("secrets.toml", "default_backend = \"m\"\n[backends.m]\nkind = \"file\"\ndir = \"run\"\n[secrets]\nE = \"escape\"\n");
    p.run(&["--", "true"])
        .code(77)
        .stderr_has("resolves outside");

    // `..` and absolute paths are refused before anything is read, with the entry's line.
    p.write(
        "secrets.toml",
        "default_backend = \"m\"\n[backends.m]\nkind = \"file\"\ndir = \"run\"\n[secrets]\nUP = \"../outside\"\nABS = \"/etc/hostname\"\n",
    );
    p.run(&["--", "true"])
        .code(78)
        .stderr_has("secrets.toml:6:1: secret `UP`: path `../outside` contains `..`")
        .stderr_has("secrets.toml:7:1: secret `ABS`: path `/etc/hostname` is absolute");
}

#[test]
fn file_backend_uses_systemd_credentials_directory() {
    let p = Project::with_manifest(
        "[backends.creds]\nkind = \"file\"\n[secrets]\nTOKEN = { backend = \"creds\", path = \"token\" }\n",
    );
    p.write("creds/token", "systemd-cred\n");
    let dir = p.path("creds");
    let env = child_env(&p, &[], &[("CREDENTIALS_DIRECTORY", dir.to_str().unwrap())]);
    assert_eq!(env["TOKEN"], "systemd-cred");
    p.run(&["--", "true"])
        .code(78)
        .stderr_has("needs `dir` (or $CREDENTIALS_DIRECTORY");
}

#[test]
fn command_backend_arg_placeholder_stdin_and_json() {
    let p = Project::new();
    script(&p, "bin/provider", r#"echo "value-for-$1""#);
    script(
        &p,
        "bin/stdin-provider",
        r#"read path; printf '{"user":"u-%s","n":7}\n' "$path""#,
    );
    p.write(
        "secrets.toml",
        r#"
[backends.arg]
kind = "command"
argv = ["./bin/provider"]
[backends.tmpl]
kind = "command"
argv = ["sh", "-c", "echo \"tmpl:$0\"", "op://vault/{path}"]
[backends.stdin]
kind = "command"
argv = ["./bin/stdin-provider"]
input = "stdin"
[secrets]
A = { backend = "arg", path = "db/url" }
B = { backend = "tmpl", path = "item/field" }
C = { backend = "stdin", path = "svc", key = "user" }
D = { backend = "stdin", path = "svc", key = "n" }
"#,
    );
    let env = child_env(&p, &[], &[]);
    assert_eq!(env["A"], "value-for-db/url");
    assert_eq!(env["B"], "tmpl:op://vault/item/field");
    assert_eq!(env["C"], "u-svc");
    assert_eq!(env["D"], "7");
}

#[test]
fn command_backend_failures_are_reported_together() {
    let p = Project::new();
    script(
        &p,
        "bin/fails",
        "echo 'item not found in vault Private' >&2; exit 3",
    );
    script(&p, "bin/silent", "exit 0");
    script(&p, "bin/slow", "echo $$ > slow.pid; exec sleep 30");
    p.write(
        "secrets.toml",
        r#"
[backends.fails]
kind = "command"
argv = ["./bin/fails"]
[backends.silent]
kind = "command"
argv = ["./bin/silent"]
[backends.slow]
kind = "command"
argv = ["./bin/slow"]
timeout = "300ms"
[backends.missing]
kind = "command"
argv = ["no-such-provider-program"]
[secrets]
A = { backend = "fails", path = "a" }
B = { backend = "silent", path = "b" }
C = { backend = "slow", path = "c" }
D = { backend = "missing", path = "d" }
"#,
    );
    let run = p.run(&["--", "true"]);
    run.code(69)
        .stderr_has("cannot resolve 4 secrets")
        .stderr_has(
            "A (backend `fails`, path `a`): `./bin/fails` exited with status 3; its stderr:",
        )
        .stderr_has("item not found in vault Private")
        .stderr_has("B (backend `silent`, path `b`): `./bin/silent` printed nothing on stdout")
        .stderr_has(
            "C (backend `slow`, path `c`): `./bin/slow` did not finish within 300ms; it was killed",
        )
        .stderr_has("cannot start `no-such-provider-program`");
    // The timed-out provider was killed, not left behind.
    let pid = std::fs::read_to_string(p.path("slow.pid")).unwrap();
    crate::support::assert_gone(pid.trim().parse().unwrap());
}

#[test]
fn env_policy_inherit_and_remove() {
    let p = Project::with_manifest("[secrets]\nS = \"s\"\n[env]\ninherit = [\"PATH\", \"KEEP\"]\n");
    p.write(".env", "S=v\n");
    let mut env = child_env(&p, &[], &[("KEEP", "1"), ("DROP", "1")]);
    env.remove("PWD"); // exported by the `sh` that dumps the environment
    assert_eq!(
        env.keys().map(String::as_str).collect::<Vec<_>>(),
        ["KEEP", "PATH", "S"]
    );

    p.write(
        "secrets.toml",
        "[secrets]\nS = \"s\"\n[env]\nremove = [\"ADMIN_API_KEY\"]\n",
    );
    let env = child_env(&p, &[], &[("ADMIN_API_KEY", "x"), ("OTHER", "1")]);
    assert!(!env.contains_key("ADMIN_API_KEY"));
    assert_eq!(env["OTHER"], "1");

    p.write(
        "secrets.toml",
        "[secrets]\nS = \"s\"\n[env]\ninherit = false\n",
    );
    let out = p.run(&["--", "/usr/bin/env"]);
    out.code(0);
    assert_eq!(
        out.stdout, "S=v\n",
        "inherit = false passes the secrets only"
    );
}

#[test]
fn one_read_per_path_for_several_keys() {
    let p = Project::new();
    script(
        &p,
        "bin/counted",
        r#"echo x >> calls.log; echo '{"a":"1","b":"2"}'"#,
    );
    p.write(
        "secrets.toml",
        "[backends.c]\nkind = \"command\"\nargv = [\"./bin/counted\"]\n[secrets]\nA = { backend = \"c\", path = \"p\", key = \"a\" }\nB = { backend = \"c\", path = \"p\", key = \"b\" }\n",
    );
    let env = child_env(&p, &[], &[]);
    assert_eq!((env["A"].as_str(), env["B"].as_str()), ("1", "2"));
    assert_eq!(
        std::fs::read_to_string(p.path("calls.log"))
            .unwrap()
            .lines()
            .count(),
        1
    );
}

/// A `.env` that is a FIFO nobody writes to (1Password Environments mounts `.env` as a named
/// pipe) blocks a read forever: the deadline must still end the run, on both resolve paths.
#[test]
fn a_blocking_local_read_is_cut_off_by_the_deadline() {
    let p = Project::new();
    nix::unistd::mkfifo(&p.path(".env"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    script(&p, "bin/provider", "echo v");
    let local_only = "[secrets]\nA = \"a\"\n";
    let mixed = "[backends.c]\nkind = \"command\"\nargv = [\"./bin/provider\"]\n[secrets]\nA = \"a\"\nB = { backend = \"c\", path = \"b\" }\n";
    for manifest in [local_only, mixed] {
        p.write("secrets.toml", manifest);
        for args in [
            &["--timeout", "300ms", "--exec", "--", "true"][..],
            &["--timeout", "300ms", "check"],
        ] {
            let mut cmd = p.cmd();
            cmd.args(args);
            let run = crate::support::run_within(cmd, std::time::Duration::from_secs(10));
            run.code(69);
            let said = format!("{}{}", run.stdout, run.stderr);
            assert!(said.contains("deadline (--timeout)"), "{said}");
        }
    }
}
