//! `secret-run rotate` end to end: a supervised service (with `[run] pidfile`) that records the
//! key it was started with, a new key written as a pending version in real OpenBao or moto, the
//! service reloaded, `--verify` run, then promoted or rolled back.

#![cfg(all(feature = "vault", feature = "aws"))]

use std::time::Duration;

use crate::openbao::ROOT_TOKEN;
use crate::support::{Project, Run, Supervised, script, wait_until};

fn rotate(p: &Project, env: &[(&str, &str)], args: &[&str], stdin: &[u8]) -> Run {
    let mut all = vec!["rotate"];
    all.extend(args);
    crate::support::run_with_stdin(p, &all, env, stdin)
}

/// A service that writes the key it got, then waits (slow to stop on SIGTERM).
fn service(p: &Project) -> String {
    script(
        p,
        "service.sh",
        "printf %s \"$STRIPE_KEY\" > key.seen.tmp && mv key.seen.tmp key.seen\ntrap 'sleep 0.2; exit 0' TERM\nwhile :; do sleep 0.1; done",
    )
    .display()
    .to_string()
}

fn seen(p: &Project) -> String {
    std::fs::read_to_string(p.path("key.seen")).unwrap_or_default()
}

fn manifest(backend: &str, path: &str) -> String {
    format!(
        "[audit]\npath = \"audit.log\"\n\n[backends.vault]\nkind = \"vault\"\n\n[backends.aws]\nkind = \"aws-secrets-manager\"\n\n\
         [secrets]\nSTRIPE_KEY = {{ backend = \"{backend}\", path = \"{path}\" }}\n\n\
         [run]\npidfile = \"run/service.pid\"\nmin_restart_interval = \"1s\"\n"
    )
}

#[test]
fn a_vault_rotation_is_promoted_when_verify_passes_and_rolled_back_when_it_fails() {
    let bao = crate::openbao::shared();
    bao.ok(&["kv", "put", "secret/t-rotate/stripe", "value=sk_old"]);
    let p = Project::with_manifest(&manifest("vault", "t-rotate/stripe"));
    let env = [
        ("VAULT_ADDR", bao.addr.as_str()),
        ("VAULT_TOKEN", ROOT_TOKEN),
    ];
    let svc = service(&p);
    let run = Supervised::start_env(&p, &["--", &svc], &env);
    wait_until("the service", Duration::from_secs(10), || {
        seen(&p) == "sk_old"
    });
    assert!(p.path("run/service.pid").exists() && p.path("run/service.pid.status").exists());

    // The service must be on the new key for the check to pass.
    let verify = "test \"$STRIPE_KEY\" = \"$(cat key.seen)\"";
    let r = rotate(
        &p,
        &env,
        &["STRIPE_KEY", "--stdin", "--verify", verify],
        b"sk_new\n",
    );
    r.code(0).stderr_has("is current");
    assert_eq!(seen(&p), "sk_new");
    assert_eq!(
        bao.ok(&["kv", "get", "-field=value", "secret/t-rotate/stripe"])
            .trim(),
        "sk_new"
    );

    // A check that fails: rolled back, and the service is back on the old key.
    let r = rotate(
        &p,
        &env,
        &["STRIPE_KEY", "--stdin", "--verify", "false"],
        b"sk_bad",
    );
    r.code(1).stderr_has("rolled back");
    assert_eq!(
        bao.ok(&["kv", "get", "-field=value", "secret/t-rotate/stripe"])
            .trim(),
        "sk_new"
    );
    wait_until(
        "the service back on the key",
        Duration::from_secs(10),
        || seen(&p) == "sk_new",
    );
    let log = std::fs::read_to_string(p.path("audit.log")).unwrap();
    for step in [
        "\"step\":\"pending\"",
        "\"step\":\"reload\"",
        "\"step\":\"verify\"",
        "\"step\":\"promote\"",
        "\"step\":\"rollback\"",
    ] {
        assert!(log.contains(step), "{step}: {log}");
    }
    assert!(!log.contains("sk_new") && !log.contains("sk_bad"));
    run.stop_expecting(0);
    assert!(
        !p.path("run/service.pid").exists(),
        "the pidfile is removed at exit"
    );
}

#[test]
fn an_aws_rotation_uses_awspending_and_promotes_only_after_verify() {
    let m = crate::moto::shared();
    m.py("sm.create_secret(Name='t-rotate/stripe', SecretString='sk_old')");
    let p = Project::with_manifest(&manifest("aws", "t-rotate/stripe"));
    let aws: Vec<(&str, String)> = m.env();
    let env: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let svc = service(&p);
    let run = Supervised::start_env(&p, &["--", &svc], &env);
    wait_until("the service", Duration::from_secs(10), || {
        seen(&p) == "sk_old"
    });
    let stage = |stage: &str| {
        m.py(&format!(
            "print(sm.get_secret_value(SecretId='t-rotate/stripe', VersionStage='{stage}')['SecretString'])"
        ))
        .trim()
        .to_owned()
    };
    // Verify fails: AWSCURRENT never moved, AWSPENDING is gone, the service never reloaded.
    let r = rotate(
        &p,
        &env,
        &["STRIPE_KEY", "--generate", "32", "--verify", "exit 3"],
        b"",
    );
    r.code(1).stderr_has("rolled back");
    assert_eq!(stage("AWSCURRENT"), "sk_old");
    let pending = m.py("print([v for v in sm.list_secret_version_ids(SecretId='t-rotate/stripe')['Versions'] if 'AWSPENDING' in v.get('VersionStages', [])])");
    assert_eq!(pending.trim(), "[]");
    assert_eq!(seen(&p), "sk_old");
    // Verify passes: promoted, the old one kept as AWSPREVIOUS, the service reloaded onto it.
    let r = rotate(
        &p,
        &env,
        &[
            "STRIPE_KEY",
            "--generate",
            "32",
            "--verify",
            "test ${#STRIPE_KEY} -eq 43",
        ],
        b"",
    );
    r.code(0);
    let current = stage("AWSCURRENT");
    assert_eq!(current.len(), 43, "base64url of 32 bytes");
    assert_eq!(stage("AWSPREVIOUS"), "sk_old");
    wait_until(
        "the service on the new key",
        Duration::from_secs(10),
        || seen(&p) == current,
    );
    run.stop_expecting(0);
}

#[test]
fn rotate_refuses_a_dead_or_foreign_pid_and_rolls_back_when_no_reload_comes() {
    let bao = crate::openbao::shared();
    bao.ok(&["kv", "put", "secret/t-rotate-bad/k", "value=v1"]);
    let p = Project::with_manifest(&manifest("vault", "t-rotate-bad/k"));
    let env = [
        ("VAULT_ADDR", bao.addr.as_str()),
        ("VAULT_TOKEN", ROOT_TOKEN),
    ];
    std::fs::create_dir_all(p.path("run")).unwrap();
    // A pidfile left by a process that is gone.
    p.write("run/service.pid", "999999\n");
    rotate(&p, &env, &["STRIPE_KEY", "--stdin"], b"v2")
        .code(64)
        .stderr_has("is not running: a stale pidfile?");
    // A live process that is not secret-run.
    p.write("run/service.pid", &format!("{}\n", std::process::id()));
    rotate(&p, &env, &["STRIPE_KEY", "--stdin"], b"v2")
        .code(64)
        .stderr_has("not secret-run");
    // A secret-run that reports no reload (its status file is not where the pidfile says).
    let other = Project::with_manifest(
        &manifest("vault", "t-rotate-bad/k").replace("pidfile = \"run/service.pid\"\n", ""),
    );
    let svc = service(&other);
    let run = Supervised::start_env(&other, &["--", &svc], &env);
    wait_until("the other service", Duration::from_secs(10), || {
        seen(&other) == "v1"
    });
    p.write("run/service.pid", &format!("{}\n", run.pid()));
    let r = rotate(
        &p,
        &env,
        &["STRIPE_KEY", "--stdin", "--reload-timeout", "1s"],
        b"v2",
    );
    r.code(1).stderr_has("did not report the reload within 1s");
    assert_eq!(
        bao.ok(&["kv", "get", "-field=value", "secret/t-rotate-bad/k"])
            .trim(),
        "v1"
    );
    drop(run);
    // The new value: empty is a usage error, a NUL byte a bad value (as for `put`).
    rotate(&other, &env, &["STRIPE_KEY", "--stdin"], b"")
        .code(64)
        .stderr_has("the new value is empty");
    rotate(
        &other,
        &env,
        &["STRIPE_KEY", "--stdin"],
        b"CANARY-rotate-nul\0x",
    )
    .code(65)
    .stderr_has("NUL")
    .no_canary(true);
    assert_eq!(
        bao.ok(&["kv", "get", "-field=value", "secret/t-rotate-bad/k"])
            .trim(),
        "v1"
    );
    // A backend without versions.
    let d = Project::with_manifest("[secrets]\nK = \"k\"\n");
    d.write(".env", "K=1\n");
    rotate(&d, &[], &["K", "--stdin"], b"2")
        .code(64)
        .stderr_has("keeps no versions to roll back to");
    // --dry-run changes nothing, and says what it would do.
    std::fs::remove_file(p.path("run/service.pid")).unwrap();
    let r = rotate(
        &p,
        &env,
        &["STRIPE_KEY", "--generate", "16", "--dry-run"],
        b"",
    );
    r.code(0)
        .stdout_has("pending version")
        .stdout_has("the supervisor cannot be reloaded");
    assert_eq!(
        bao.ok(&["kv", "get", "-field=value", "secret/t-rotate-bad/k"])
            .trim(),
        "v1"
    );
}

#[test]
fn with_ready_rotate_verifies_once_the_restarted_service_is_ready_and_rolls_back_one_never_ready() {
    let bao = crate::openbao::shared();
    bao.ok(&["kv", "put", "secret/t-rotate-ready/stripe", "value=sk_old"]);
    let p = Project::with_manifest(&format!(
        "{}ready = {{ cmd = [\"sh\", \"-c\", \"test -f ready.$SECRET_RUN_CHILD_PID\"], timeout = \"3s\" }}\n",
        manifest("vault", "t-rotate-ready/stripe")
    ));
    let env = [
        ("VAULT_ADDR", bao.addr.as_str()),
        ("VAULT_TOKEN", ROOT_TOKEN),
    ];
    // Ready (and serving its key) a second after it starts; never with the key `sk_broken`.
    let svc = script(
        &p,
        "service.sh",
        "trap 'exit 0' TERM\nsleep 1\nif [ \"$STRIPE_KEY\" != sk_broken ]; then printf %s \"$STRIPE_KEY\" > key.seen.tmp && mv key.seen.tmp key.seen; : > ready.$$; fi\nwhile :; do sleep 0.1; done",
    )
    .display()
    .to_string();
    let run = Supervised::start_env(&p, &["--", &svc], &env);
    wait_until("the service", Duration::from_secs(10), || {
        seen(&p) == "sk_old"
    });
    // The check passes only against the new child once it is ready: the reload is reported
    // then, not when the child starts.
    let verify = "test \"$STRIPE_KEY\" = \"$(cat key.seen)\"";
    rotate(
        &p,
        &env,
        &["STRIPE_KEY", "--stdin", "--verify", verify],
        b"sk_new",
    )
    .code(0)
    .stderr_has("is current");
    assert_eq!(seen(&p), "sk_new");
    // A key the service cannot get ready with: reported `not-ready`, rolled back at once.
    let r = rotate(&p, &env, &["STRIPE_KEY", "--stdin"], b"sk_broken");
    r.code(1)
        .stderr_has("ended `not-ready`")
        .stderr_has("rolled back");
    assert_eq!(
        bao.ok(&["kv", "get", "-field=value", "secret/t-rotate-ready/stripe"])
            .trim(),
        "sk_new"
    );
    wait_until(
        "the service back on sk_new",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(p.path("audit.log"))
                .unwrap_or_default()
                .matches("\"event\":\"ready\"")
                .count()
                >= 2
        },
    );
    run.stop_expecting(0);
}
