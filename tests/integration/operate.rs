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
