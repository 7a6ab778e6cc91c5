//! The operator's commands: `get` and `export` in every format, read back by the programs that
//! consume them (dotenvy, python-dotenv, secret-run's own dotenv backend, sh and bash, JSON, the
//! GitHub Actions file format), with values that break naive quoting.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::kept::venv_bin;
use crate::support::Project;

/// Values that break naive quoting, each readable back through a .env.
const VALUES: &[(&str, &str)] = &[
    ("PLAIN", "CANARY-env-91d0aa"),
    ("SPACES", "  leading and trailing  "),
    ("HASH", "a # not a comment"),
    ("DOLLAR", "$HOME $ cost$5"),
    ("DOUBLE", "say \"hi\""),
    ("SINGLE", "it's"),
    ("BACKSLASH", "C:\\dir\\n"),
    ("NEWLINES", "line one\nline two\n"),
    ("UNICODE", "pâte — 東京 🔑"),
    ("EQUALS", "a=b=c"),
    ("EMPTYISH", " "),
];

fn project() -> (Project, Vec<(String, String)>) {
    let mut manifest = String::from("[audit]\npath = \"audit.log\"\n\n[secrets]\n");
    let mut env = Vec::new();
    for (name, value) in VALUES {
        manifest.push_str(&format!(
            "{name} = {{ backend = \"env\", path = \"SRC_{name}\" }}\n"
        ));
        env.push((format!("SRC_{name}"), (*value).to_owned()));
    }
    (Project::with_manifest(&manifest), env)
}

fn run(p: &Project, env: &[(String, String)], args: &[&str]) -> crate::support::Run {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    p.run_env(args, &env)
}

fn expected() -> BTreeMap<String, String> {
    VALUES
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn export_dotenv_reads_back_the_same_in_dotenvy_python_dotenv_and_secret_run() {
    let (p, env) = project();
    run(&p, &env, &["export", "-o", "out.env"]).code(0);
    let mode = std::fs::metadata(p.path("out.env"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // dotenvy
    let read: BTreeMap<String, String> = dotenvy::from_path_iter(p.path("out.env"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(read, expected(), "dotenvy");
    // python-dotenv
    let out = Command::new(venv_bin("python"))
        .args([
            "-c",
            "import json, sys; from dotenv import dotenv_values; print(json.dumps(dotenv_values(sys.argv[1])))",
        ])
        .arg(p.path("out.env"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: BTreeMap<String, String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(read, expected(), "python-dotenv");
    // secret-run's own dotenv backend, reading the exported file.
    let back = Project::with_manifest(
        &VALUES
            .iter()
            .fold(String::from("[secrets]\n"), |m, (n, _)| {
                m + &format!("{n} = \"{n}\"\n")
            }),
    );
    std::fs::copy(p.path("out.env"), back.path(".env")).unwrap();
    let r = back.run(&["export", "--format", "json"]);
    r.code(0);
    let read: BTreeMap<String, String> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(read, expected(), "secret-run's dotenv backend");
    // Not overwritten without --force; replaced with it.
    run(&p, &env, &["export", "-o", "out.env"])
        .code(73)
        .stderr_has("--force");
    run(&p, &env, &["export", "-o", "out.env", "--force"]).code(0);
    // A value no .env quoting carries through both readers is refused, by name.
    let mut bad = env.clone();
    bad.retain(|(k, _)| k != "SRC_DOLLAR");
    bad.push(("SRC_DOLLAR".into(), "it's $HOME".into()));
    let r = run(&p, &bad, &["export"]);
    r.code(64)
        .stderr_has("`DOLLAR` holds `${` (python-dotenv expands it");
    assert!(!r.stderr.contains("it's $HOME"));
    bad.pop();
    bad.push(("SRC_DOLLAR".into(), "${PATH}".into()));
    run(&p, &bad, &["export"]).code(64);
}

#[test]
fn export_shell_json_and_github_env_read_back_the_same() {
    let (p, env) = project();
    let r = run(&p, &env, &["export", "--format", "shell"]);
    r.code(0);
    p.write("out.sh", &r.stdout);
    for shell in ["sh", "bash"] {
        for (name, value) in VALUES {
            let out = Command::new(shell)
                .current_dir(p.dir.path())
                .args(["-c", &format!(". ./out.sh; printf %s \"${name}\"")])
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                *value,
                "{shell} {name}"
            );
        }
    }
    let r = run(&p, &env, &["export", "--format", "json"]);
    r.code(0);
    let read: BTreeMap<String, String> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(read, expected());
    // github-env: masks on stdout first, then NAME<<DELIM blocks appended to $GITHUB_ENV.
    p.write("github_env", "EARLIER=kept\n");
    let mut gh = env.clone();
    gh.push((
        "GITHUB_ENV".into(),
        p.path("github_env").display().to_string(),
    ));
    let r = run(&p, &gh, &["export", "--format", "github-env"]);
    r.code(0)
        .stdout_has("::add-mask::CANARY-env-91d0aa\n")
        .stdout_has("::add-mask::line two\n");
    let text = std::fs::read_to_string(p.path("github_env")).unwrap();
    assert!(text.starts_with("EARLIER=kept\n"));
    let mut read = BTreeMap::new();
    let mut lines = text.lines().skip(1);
    while let Some(head) = lines.next() {
        let (name, delim) = head.split_once("<<").unwrap();
        let mut body = Vec::new();
        for l in lines.by_ref() {
            if l == delim {
                break;
            }
            body.push(l);
        }
        read.insert(name.to_owned(), body.join("\n"));
    }
    // What the runner reads: each body up to the line before its delimiter.
    assert_eq!(read, expected());
    let log = std::fs::read_to_string(p.path("audit.log")).unwrap();
    assert!(log.contains("\"event\":\"export\"") && log.contains("\"format\":\"github-env\""));
    assert!(!log.contains("CANARY"));
}

#[test]
fn get_prints_one_value_and_is_audited() {
    let (p, env) = project();
    let r = run(&p, &env, &["get", "NEWLINES"]);
    r.code(0);
    assert_eq!(r.stdout, "line one\nline two\n\n");
    let r = run(&p, &env, &["get", "-n", "PLAIN"]);
    assert_eq!(r.stdout, "CANARY-env-91d0aa");
    run(&p, &env, &["get", "PLAN"])
        .code(64)
        .stderr_has("`PLAN` is not in the manifest (did you mean `PLAIN`?)");
    let log = std::fs::read_to_string(p.path("audit.log")).unwrap();
    assert!(log.contains("\"event\":\"get\",\"var\":\"PLAIN\""), "{log}");
    assert!(!log.contains("CANARY"));
    // -v adds no value anywhere else; -q does not hide it.
    let r = run(&p, &env, &["-vvv", "get", "PLAIN"]);
    assert!(!r.stderr.contains("CANARY-env-91d0aa"));
    assert_eq!(
        run(&p, &env, &["-q", "get", "PLAIN"]).stdout,
        "CANARY-env-91d0aa\n"
    );
}

#[cfg(all(feature = "vault", feature = "aws"))]
mod writes {
    use crate::openbao::ROOT_TOKEN;
    use crate::support::{Project, Run};

    fn put(p: &Project, env: &[(&str, &str)], args: &[&str], stdin: &[u8]) -> Run {
        crate::support::run_with_stdin(p, args, env, stdin)
    }

    const MANIFEST: &str = r#"[audit]
path = "audit.log"

[backends.vault]
kind = "vault"
prefix = "PREFIX/"

[backends.aws]
kind = "aws-secrets-manager"
prefix = "PREFIX/"

[backends.ssm]
kind = "aws-ssm"
prefix = "/PREFIX/"

[backends.mounted]
kind = "file"
dir = "mounted"

[secrets]
DATABASE_URL = "database/url"
DB_USER = { path = "db", key = "user" }
DB_PASSWORD = { path = "db", key = "password" }
STRIPE_KEY = "stripe/key"
HOME_DIR = { backend = "env", path = "HOME" }
"#;

    #[test]
    fn migrate_from_dotenv_to_vault_and_aws_then_run_from_there() {
        let bao = crate::openbao::shared();
        let m = crate::moto::shared();
        let p = Project::with_manifest(&MANIFEST.replace("PREFIX", "t-migrate"));
        p.write(
            ".env",
            "DATABASE_URL='postgres://app@db/app'\nDB='{\"user\":\"app\",\"password\":\"CANARY-dotenv-7f3a9c\"}'\nSTRIPE_KEY=sk_live_1\n",
        );
        let aws: Vec<(&str, String)> = m.env();
        let mut env: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.extend([
            ("VAULT_ADDR", bao.addr.as_str()),
            ("VAULT_TOKEN", ROOT_TOKEN),
        ]);
        for to in ["vault", "aws", "ssm"] {
            let dry = p.run_env(&["migrate", "--to", to, "--dry-run"], &env);
            dry.code(0).stdout_has("would-write");
            let r = p.run_env(&["-vvv", "migrate", "--to", to], &env);
            r.code(0).stdout_has("written").no_canary(true);
            // The env entry names its backend: it moves too, and its value is the process's.
            // Run the service from the new backend, with the same manifest.
            let dump = crate::support::child_env(&p, &["--backend", to], &env);
            assert_eq!(dump["DB_PASSWORD"], "CANARY-dotenv-7f3a9c", "{to}");
            assert_eq!(dump["DATABASE_URL"], "postgres://app@db/app", "{to}");
            assert_eq!(dump["STRIPE_KEY"], "sk_live_1", "{to}");
            // Again: nothing replaced without --overwrite.
            let again = p.run_env(&["migrate", "--to", to, "--json"], &env);
            again.code(0).stdout_has("\"outcome\": \"kept\"");
        }
        let log = std::fs::read_to_string(p.path("audit.log")).unwrap();
        assert!(log.contains("\"event\":\"put\"") && !log.contains("CANARY"));
    }

    #[test]
    fn put_writes_a_new_version_in_every_writable_backend() {
        let bao = crate::openbao::shared();
        let m = crate::moto::shared();
        let p = Project::with_manifest(&MANIFEST.replace("PREFIX", "t-put"));
        p.write(
            ".env",
            "# kept as it is\nSTRIPE_KEY=old # old key\nOTHER='x'\n",
        );
        let aws: Vec<(&str, String)> = m.env();
        let mut env: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.extend([
            ("VAULT_ADDR", bao.addr.as_str()),
            ("VAULT_TOKEN", ROOT_TOKEN),
        ]);
        for backend in ["dotenv", "vault", "aws", "ssm", "mounted"] {
            let mut with: Vec<(&str, &str)> = env.clone();
            with.push(("SECRET_BACKEND", backend));
            put(&p, &with, &["put", "DATABASE_URL"], b"postgres://db/app\n").code(0);
            put(&p, &with, &["put", "DB_USER"], b"app\n").code(0);
            put(&p, &with, &["put", "DB_PASSWORD"], b"first-pw\n").code(0);
            put(
                &p,
                &with,
                &["put", "STRIPE_KEY"],
                b"it's a \"key\"\nwith lines",
            )
            .code(0);
            let dump = crate::support::child_env(&p, &[], &with);
            assert_eq!(dump["DB_USER"], "app", "{backend}");
            assert_eq!(dump["DB_PASSWORD"], "first-pw", "{backend}");
            assert_eq!(
                dump["STRIPE_KEY"], "it's a \"key\"\nwith lines",
                "{backend}"
            );
            // One field changed, the other kept.
            put(
                &p,
                &with,
                &["put", "DB_PASSWORD", "--from-file", "secrets.toml"],
                b"",
            )
            .code(0);
            let dump = crate::support::child_env(&p, &[], &with);
            assert_eq!(dump["DB_USER"], "app", "{backend}");
            assert!(dump["DB_PASSWORD"].contains("[audit]"), "{backend}");
        }
        // The .env: only its lines for those keys changed.
        let text = std::fs::read_to_string(p.path(".env")).unwrap();
        assert!(text.starts_with("# kept as it is\n"), "{text}");
        assert!(text.contains("OTHER='x'\n"), "{text}");
        let mode = std::fs::metadata(p.path("mounted/db")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
    }

    #[test]
    fn put_refuses_what_it_cannot_do_and_a_concurrent_writer_is_a_conflict() {
        let bao = crate::openbao::shared();
        let p = Project::with_manifest(&MANIFEST.replace("PREFIX", "t-put-bad"));
        let env = [
            ("VAULT_ADDR", bao.addr.as_str()),
            ("VAULT_TOKEN", ROOT_TOKEN),
            ("SECRET_BACKEND", "vault"),
        ];
        put(&p, &env, &["put", "STRIPE_KEY"], b"v1").code(0);
        bao.ok(&[
            "kv",
            "put",
            "secret/t-put-bad/stripe/key",
            "value=someone-else",
        ]);
        // The version this operator saw (1) is not the current one (2).
        let r = put(
            &p,
            &env,
            &["put", "STRIPE_KEY", "--cas", "1"],
            b"CANARY-vault-pw-41c9",
        );
        r.code(75).stderr_has("check-and-set").no_canary(true);
        assert!(
            bao.ok(&["kv", "get", "-field=value", "secret/t-put-bad/stripe/key"])
                .contains("someone-else")
        );
        put(&p, &env, &["put", "STRIPE_KEY", "--cas", "2"], b"v3").code(0);
        put(&p, &env, &["put", "STRIPE_KY"], b"x")
            .code(64)
            .stderr_has("did you mean `STRIPE_KEY`");
        put(&p, &env, &["put", "HOME_DIR"], b"x")
            .code(64)
            .stderr_has("backend `env` (kind env) cannot be written");
        put(&p, &env, &["put", "STRIPE_KEY"], b"")
            .code(64)
            .stderr_has("the new value is empty");
        put(
            &p,
            &env,
            &["-vvv", "put", "STRIPE_KEY"],
            b"CANARY-vault-pw-41c9\0x",
        )
        .code(65)
        .stderr_has("NUL")
        .no_canary(true);
    }
}
