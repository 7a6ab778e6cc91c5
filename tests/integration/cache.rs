//! The encrypted last-known-good cache: written after a start with the backends up (0600, no
//! value readable), served at a start during a real outage (OpenBao stopped, moto stopped) within
//! `max_age`, never for a secret that is gone or refused, and every unusable cache said clearly.
//! The real `age` program decrypts what secret-run wrote, as an operator would.

#![cfg(all(feature = "vault", feature = "aws"))]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use crate::openbao::{Bao, ROOT_TOKEN};
use crate::support::{Project, Run, read_env_dump};

const PASSWORD: &str = "CANARY-vault-pw-41c9";
const DOTENV_VALUE: &str = "CANARY-dotenv-7f3a9c";

fn manifest(p: &Project, path: &str, max_age: &str) {
    p.write(
        "secrets.toml",
        &format!(
            "[audit]\npath = \"audit.log\"\n\n[cache]\npath = \"state/cache.age\"\nkey_file = \"cache.key\"\nmax_age = \"{max_age}\"\n\n\
             [backends.vault]\nkind = \"vault\"\n\n[secrets]\n\
             DB_PASSWORD = {{ backend = \"vault\", path = \"{path}\", key = \"password\" }}\n\
             DB_USER = {{ backend = \"vault\", path = \"{path}\", key = \"user\" }}\n\
             DATABASE_URL = {{ template = \"postgres://{{{{ DB_USER }}}}:{{{{ DB_PASSWORD }}}}@db/app\" }}\n\
             LOCAL = \"local\"\n"
        ),
    );
    p.write(".env", &format!("LOCAL={DOTENV_VALUE}\n"));
}

fn keygen(p: &Project) -> String {
    let r = p.run(&["cache", "keygen"]);
    r.code(0);
    assert_eq!(
        std::fs::metadata(p.path("cache.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    r.stdout.trim().to_owned()
}

fn start(p: &Project, addr: &str, extra: &[&str]) -> Run {
    let mut args = vec!["--timeout", "5s"];
    args.extend(extra);
    args.extend(["--exec", "--", "sh", "-c", "env -0 > env.out"]);
    p.run_env(&args, &[("VAULT_ADDR", addr), ("VAULT_TOKEN", ROOT_TOKEN)])
}

/// The cache as the real `age` decrypts it with the key.
fn decrypted(p: &Project) -> serde_json::Value {
    let out = Command::new("age")
        .args(["-d", "-i"])
        .arg(p.path("cache.key"))
        .arg(p.path("state/cache.age"))
        .output()
        .expect("age (scripts/install-test-servers installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn audit(p: &Project) -> String {
    std::fs::read_to_string(p.path("audit.log")).unwrap_or_default()
}

#[test]
fn a_start_during_an_openbao_outage_is_served_from_the_cache_within_max_age() {
    let mut bao = Bao::start(&[]);
    bao.ok(&[
        "kv",
        "put",
        "secret/cache/db",
        &format!("password={PASSWORD}"),
        "user=app",
    ]);
    let p = Project::new();
    manifest(&p, "cache/db", "1h");
    let recipient = keygen(&p);
    assert!(recipient.starts_with("age1"), "{recipient}");
    let addr = bao.addr.clone();
    start(&p, &addr, &[]).code(0);
    // Written, 0600, nothing readable in its bytes.
    let file = p.path("state/cache.age");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1"));
    for canary in [PASSWORD, DOTENV_VALUE, "postgres://"] {
        assert!(
            !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
            "{canary} readable in the cache"
        );
    }
    // What it holds: the remote values with their mapping and time; no local value, no
    // composed one.
    let doc = decrypted(&p);
    assert_eq!(doc["entries"]["DB_PASSWORD"]["value"], PASSWORD);
    assert!(doc["entries"]["LOCAL"].is_null() && doc["entries"]["DATABASE_URL"].is_null());
    assert!(!doc.to_string().contains(DOTENV_VALUE));

    bao.stop();
    let r = start(&p, &addr, &[]);
    r.code(0)
        .stderr_has("starting with cached values: DB_PASSWORD (")
        .stderr_has("DB_USER (");
    assert!(!r.stderr.contains(PASSWORD));
    let env = read_env_dump(&p.path("env.out"));
    assert_eq!(env["DB_PASSWORD"], PASSWORD);
    assert_eq!(
        env["DATABASE_URL"],
        format!("postgres://app:{PASSWORD}@db/app")
    );
    assert_eq!(env["LOCAL"], DOTENV_VALUE);
    let log = audit(&p);
    assert!(log.contains("\"event\":\"cache-serve\""), "{log}");
    assert!(log.contains("{\"var\":\"DB_PASSWORD\",\"age_s\":"), "{log}");
    assert!(!log.contains(PASSWORD));
    // `cache status` tells the same, without values.
    let status = p.run_env(&["cache", "status"], &[("VAULT_ADDR", &addr)]);
    status
        .code(0)
        .stdout_has("served during an outage")
        .stdout_has("LOCAL")
        .stdout_has("local backend: never cached");
    assert!(!status.stdout.contains(PASSWORD));

    // --no-cache: the outage fails the start.
    start(&p, &addr, &["--no-cache"])
        .code(69)
        .stderr_has("cannot reach");
    // Past max_age: not served, and said why.
    manifest(&p, "cache/db", "1s");
    std::thread::sleep(Duration::from_millis(2100));
    start(&p, &addr, &[])
        .code(69)
        .stderr_has("older than max_age (1s)");
}

#[test]
fn a_secret_the_backend_no_longer_has_or_refuses_is_never_served_from_the_cache() {
    let bao = crate::openbao::shared();
    bao.ok(&[
        "kv",
        "put",
        "secret/cache-gone/db",
        &format!("password={PASSWORD}"),
        "user=app",
    ]);
    let p = Project::new();
    manifest(&p, "cache-gone/db", "1h");
    keygen(&p);
    start(&p, &bao.addr, &[]).code(0);
    assert!(p.path("state/cache.age").exists());
    // Refused: a token OpenBao does not know.
    p.run_env(
        &["--exec", "--", "true"],
        &[("VAULT_ADDR", &bao.addr), ("VAULT_TOKEN", "not-a-token")],
    )
    .code(77);
    // Gone: not found is an answer, not an outage.
    bao.ok(&["kv", "metadata", "delete", "secret/cache-gone/db"]);
    let r = start(&p, &bao.addr, &[]);
    r.code(65);
    assert!(!r.stderr.contains("cached values"), "{}", r.stderr);
    assert!(!audit(&p).contains("cache-serve"));
}

#[test]
fn an_unusable_cache_is_said_clearly_and_nothing_starts() {
    let bao = crate::openbao::shared();
    bao.ok(&[
        "kv",
        "put",
        "secret/cache-bad/db",
        &format!("password={PASSWORD}"),
        "user=app",
    ]);
    let p = Project::new();
    manifest(&p, "cache-bad/db", "1h");
    keygen(&p);
    start(&p, &bao.addr, &[]).code(0);
    let good = std::fs::read(p.path("state/cache.age")).unwrap();
    std::fs::remove_file(p.path("env.out")).unwrap();
    let down = "http://127.0.0.1:1";
    // The manifest edited since: another mapping is never served.
    manifest(&p, "cache-bad/other", "1h");
    start(&p, down, &[])
        .code(69)
        .stderr_has("DB_PASSWORD: cached from another mapping");
    manifest(&p, "cache-bad/db", "1h");
    // Truncated.
    std::fs::write(p.path("state/cache.age"), &good[..good.len() - 20]).unwrap();
    start(&p, down, &[])
        .code(69)
        .stderr_has("truncated or corrupt");
    // Not an age file at all.
    std::fs::write(p.path("state/cache.age"), b"garbage").unwrap();
    start(&p, down, &[]).code(69).stderr_has("not an age file");
    // Another key.
    std::fs::write(p.path("state/cache.age"), &good).unwrap();
    p.run(&["cache", "keygen", "--force"]).code(0);
    let r = start(&p, down, &[]);
    r.code(69).stderr_has("encrypted to another key");
    p.run_env(&["cache", "status"], &[("VAULT_ADDR", down)])
        .code(69)
        .stderr_has("encrypted to another key");
    // No key file.
    std::fs::remove_file(p.path("cache.key")).unwrap();
    start(&p, down, &[])
        .code(69)
        .stderr_has("cannot read the cache key");
    // No cache yet.
    std::fs::remove_file(p.path("state/cache.age")).unwrap();
    keygen(&p);
    start(&p, down, &[]).code(69).stderr_has("no cache at");
    assert!(!p.path("env.out").exists(), "nothing started");
}

#[test]
fn concurrent_runs_writing_one_cache_never_leave_a_torn_file() {
    let bao = crate::openbao::shared();
    bao.ok(&[
        "kv",
        "put",
        "secret/cache-race/db",
        &format!("password={PASSWORD}"),
        "user=app",
    ]);
    let p = Project::new();
    manifest(&p, "cache-race/db", "1h");
    keygen(&p);
    for _ in 0..4 {
        let runs: Vec<_> = (0..8)
            .map(|_| {
                let mut cmd = p.cmd();
                cmd.args(["--exec", "--", "true"])
                    .env("VAULT_ADDR", &bao.addr)
                    .env("VAULT_TOKEN", ROOT_TOKEN)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
                cmd.spawn().unwrap()
            })
            .collect();
        for mut r in runs {
            assert!(r.wait().unwrap().success());
        }
        assert_eq!(decrypted(&p)["entries"]["DB_PASSWORD"]["value"], PASSWORD);
    }
    let leftovers: Vec<_> = std::fs::read_dir(p.path("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "cache.age")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_start_during_an_aws_outage_is_served_from_the_cache() {
    let mut m = crate::moto::Moto::start(&[]);
    m.py("sm.create_secret(Name='cache/stripe', SecretString='CANARY-aws-plain-0c1d')");
    let p = Project::with_manifest(
        "[cache]\npath = \"aws.age\"\nkey_file = \"cache.key\"\n\n[backends.aws]\nkind = \"aws-secrets-manager\"\n\n[secrets]\nSTRIPE_KEY = { backend = \"aws\", path = \"cache/stripe\" }\n",
    );
    keygen(&p);
    let env: Vec<(&str, String)> = m.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = |p: &Project| {
        p.run_env(
            &[
                "--timeout",
                "5s",
                "--exec",
                "--",
                "sh",
                "-c",
                "env -0 > env.out",
            ],
            &env,
        )
    };
    run(&p).code(0);
    m.stop();
    let r = run(&p);
    r.code(0)
        .stderr_has("starting with cached values: STRIPE_KEY");
    assert_eq!(
        read_env_dump(&p.path("env.out"))["STRIPE_KEY"],
        "CANARY-aws-plain-0c1d"
    );
}

#[test]
fn a_supervised_run_writes_the_cache_at_start_and_after_each_complete_reload() {
    let bao = crate::openbao::shared();
    let put = |pw: &str| {
        bao.ok(&[
            "kv",
            "put",
            "secret/cache-reload/db",
            &format!("password={pw}"),
            "user=app",
        ]);
    };
    put("first-pw");
    let p = Project::new();
    manifest(&p, "cache-reload/db", "1h");
    keygen(&p);
    let run = crate::support::Supervised::start_env(
        &p,
        &["--", "sleep", "60"],
        &[("VAULT_ADDR", &bao.addr), ("VAULT_TOKEN", ROOT_TOKEN)],
    );
    crate::support::wait_until("the cache", Duration::from_secs(10), || {
        p.path("state/cache.age").exists()
    });
    assert_eq!(decrypted(&p)["entries"]["DB_PASSWORD"]["value"], "first-pw");
    put("second-pw");
    run.signal(nix::sys::signal::Signal::SIGHUP);
    crate::support::wait_until("the rewritten cache", Duration::from_secs(10), || {
        decrypted(&p)["entries"]["DB_PASSWORD"]["value"] == "second-pw"
    });
    run.stop_expecting(143);
}
