//! The sops backend with the real `sops` and `age`: files in the four formats sops encrypts,
//! encrypted by the test with a fresh age key; nested paths; a file re-encrypted under `watch`;
//! a wrong key, a tampered file, no sops on PATH; no plaintext in any error, at trace level.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::kept::venv_bin;
use crate::support::{Project, Supervised, child_env, wait_until};

const CANARY: &str = "CANARY-sops-5e6f";

/// A fresh age key in `key.txt`; its recipient.
fn age_key(p: &Project, name: &str) -> String {
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(p.path(name))
        .output()
        .expect("age-keygen (scripts/install-test-servers installs age)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(p.path(name)).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_owned()
}

/// `plain` (named for its format) encrypted to `recipient` as `out`.
fn encrypt(p: &Project, plain: &str, out: &str, recipient: &str) {
    let result = Command::new(venv_bin("sops"))
        .current_dir(p.dir.path())
        .args(["encrypt", "--age", recipient, "--output", out, plain])
        .output()
        .expect("sops (scripts/install-test-servers installs it)");
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::remove_file(p.path(plain)).unwrap();
}

fn sops_dir() -> String {
    venv_bin("sops").parent().unwrap().display().to_string()
}

/// PATH with the venv's sops first.
fn path_with_sops() -> String {
    format!(
        "{}:{}",
        sops_dir(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn project() -> (Project, String) {
    let p = Project::new();
    let recipient = age_key(&p, "key.txt");
    p.write(
        "plain.yaml",
        &format!("database:\n  password: {CANARY}\n  port: 5432\nstripe:\n  secret: '{{\"live\": \"sk_live_9\"}}'\nhosts:\n  - a.internal\n  - b.internal\n"),
    );
    encrypt(&p, "plain.yaml", "secrets.prod.yaml", &recipient);
    p.write("plain.json", "{\"api\": {\"token\": \"json-token\"}}");
    encrypt(&p, "plain.json", "secrets.json", &recipient);
    p.write("plain.env", "SMTP_PASSWORD=env-smtp\n");
    encrypt(&p, "plain.env", "secrets.env", &recipient);
    p.write("plain.ini", "[ldap]\nbind = ini-bind\n");
    encrypt(&p, "plain.ini", "secrets.ini", &recipient);
    p.write(
        "secrets.toml",
        "[backends.yaml]\nkind = \"sops\"\nfile = \"secrets.{env}.yaml\"\n\
         [backends.json]\nkind = \"sops\"\nfile = \"secrets.json\"\n\
         [backends.dotenv_sops]\nkind = \"sops\"\nfile = \"secrets.env\"\n\
         [backends.ini]\nkind = \"sops\"\nfile = \"secrets.ini\"\n\n\
         [secrets]\n\
         DB_PASSWORD = { backend = \"yaml\", path = \"database/password\" }\n\
         DB_PORT = { backend = \"yaml\", path = \"database/port\" }\n\
         STRIPE_KEY = { backend = \"yaml\", path = \"stripe/secret\", key = \"live\" }\n\
         SECOND_HOST = { backend = \"yaml\", path = \"hosts/1\" }\n\
         API_TOKEN = { backend = \"json\", path = \"api\", key = \"/token\" }\n\
         SMTP_PASSWORD = { backend = \"dotenv_sops\", path = \"SMTP_PASSWORD\" }\n\
         LDAP_BIND = { backend = \"ini\", path = \"ldap/bind\" }\n",
    );
    (p, recipient)
}

fn env(p: &Project, path: &str) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), path.to_owned()),
        (
            "SOPS_AGE_KEY_FILE".into(),
            p.path("key.txt").display().to_string(),
        ),
        ("SECRET_RUN_ENV".into(), "prod".into()),
    ]
}

fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[test]
fn every_format_decrypts_nested_paths_resolve_and_the_key_stays_with_secret_run() {
    let (p, _) = project();
    let e = env(&p, &path_with_sops());
    let child = child_env(&p, &[], &refs(&e));
    assert_eq!(child["DB_PASSWORD"], CANARY);
    assert_eq!(child["DB_PORT"], "5432");
    assert_eq!(child["STRIPE_KEY"], "sk_live_9");
    assert_eq!(child["SECOND_HOST"], "b.internal");
    assert_eq!(child["API_TOKEN"], "json-token");
    assert_eq!(child["SMTP_PASSWORD"], "env-smtp");
    assert_eq!(child["LDAP_BIND"], "ini-bind");
    assert!(
        !child.contains_key("SOPS_AGE_KEY_FILE"),
        "the key file's path is not passed on"
    );
    // No plaintext anywhere on disk beside the encrypted files.
    for entry in std::fs::read_dir(p.dir.path()).unwrap() {
        let path: PathBuf = entry.unwrap().path();
        if path.is_file() && path.file_name().unwrap() != "env.out" {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(CANARY),
                "{}",
                path.display()
            );
        }
    }
}

#[test]
fn a_path_not_in_the_document_lists_the_keys_there_never_values() {
    let (p, _) = project();
    p.write(
        "secrets.toml",
        "[backends.yaml]\nkind = \"sops\"\nfile = \"secrets.prod.yaml\"\n[secrets]\nX = { backend = \"yaml\", path = \"database/pasword\" }\n",
    );
    let e = env(&p, &path_with_sops());
    let r = p.run_env(&["-vvv", "--", "true"], &refs(&e));
    r.code(65)
        .stderr_has("no `pasword` at `database`")
        .stderr_has("its keys are: password, port");
    assert!(!r.stderr.contains(CANARY));
}

#[test]
fn wrong_key_tampered_file_missing_file_and_missing_sops_are_each_said_clearly() {
    let (p, _) = project();
    let path = path_with_sops();
    // Another key.
    age_key(&p, "other.txt");
    let mut e = env(&p, &path);
    e[1].1 = p.path("other.txt").display().to_string();
    let r = p.run_env(&["-vvv", "--", "true"], &refs(&e));
    r.code(77).stderr_has("no key can decrypt");
    assert!(!r.stderr.contains(CANARY) && !r.stderr.contains("AGE-SECRET-KEY-1"));
    // A tampered value.
    let e = env(&p, &path);
    let text = std::fs::read_to_string(p.path("secrets.json")).unwrap();
    let at = text.find("ENC[AES256_GCM,data:").unwrap() + "ENC[AES256_GCM,data:".len();
    let flipped = if &text[at..at + 1] == "A" { "B" } else { "A" };
    p.write(
        "secrets.json",
        &format!("{}{flipped}{}", &text[..at], &text[at + 1..]),
    );
    let r = p.run_env(&["-vvv", "--", "true"], &refs(&e));
    r.code(65).stderr_has("secrets.json");
    assert!(
        r.stderr.contains("MAC check") || r.stderr.contains("does not decrypt"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(CANARY));
    // A file that is not there ({env} = staging).
    let mut e = env(&p, &path);
    e[2].1 = "staging".into();
    p.run_env(&["--", "true"], &refs(&e))
        .code(65)
        .stderr_has("secrets.staging.yaml");
    // No sops on PATH: said before anything runs.
    let e = env(&p, "/usr/bin:/bin");
    p.run_env(&["--", "true"], &refs(&e))
        .code(78)
        .stderr_has("sops is not installed");
}

#[test]
fn watch_decrypts_again_only_when_the_file_changed_and_the_new_value_reaches_the_child() {
    let (p, recipient) = project();
    p.write(
        "secrets.toml",
        "[backends.yaml]\nkind = \"sops\"\nfile = \"secrets.prod.yaml\"\n[secrets]\nDB_PASSWORD = { backend = \"yaml\", path = \"database/password\" }\n[run]\nwatch = \"1s\"\nmin_restart_interval = \"1s\"\n",
    );
    let e = env(&p, &path_with_sops());
    let run = Supervised::start_env(
        &p,
        &[
            "-vv",
            "--",
            "sh",
            "-c",
            "printf %s \"$DB_PASSWORD\" > seen; exec sleep 60",
        ],
        &refs(&e),
    );
    wait_until("the first value", Duration::from_secs(15), || {
        std::fs::read_to_string(p.path("seen")).is_ok_and(|s| s == CANARY)
    });
    wait_until(
        "a watch tick on an unchanged file",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(p.path("secret-run.err"))
                .is_ok_and(|s| s.contains("sops file unchanged; not decrypted again"))
        },
    );
    p.write("plain.yaml", "database:\n  password: rotated-in-git\n");
    encrypt(&p, "plain.yaml", "secrets.prod.yaml", &recipient);
    wait_until("the re-encrypted value", Duration::from_secs(15), || {
        std::fs::read_to_string(p.path("seen")).is_ok_and(|s| s == "rotated-in-git")
    });
    let stderr = run.stop_expecting(143);
    assert!(!stderr.contains(CANARY) && !stderr.contains("rotated-in-git"));
}
