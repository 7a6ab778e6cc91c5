//! The vault backend against a real OpenBao dev server: KV v1 and v2, keys and pointers, version
//! pins, every auth method, namespaces, TLS, and the failures (denied, sealed, gone, silent).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::openbao::{self, Bao, ROOT_TOKEN};
use crate::support::{Project, child_env};

fn backend(bao: &Bao, extra: &str) -> String {
    format!(
        "[backends.vault]\nkind = \"vault\"\naddress = \"{}\"\n{extra}\n",
        bao.addr
    )
}

const ROOT: &[(&str, &str)] = &[("VAULT_TOKEN", ROOT_TOKEN)];

#[test]
fn kv2_fields_pointers_the_only_field_and_check() {
    let bao = openbao::shared();
    bao.ok(&[
        "kv",
        "put",
        "secret/t-kv2/db",
        "user=app",
        "password=CANARY-vault-pw-41c9",
        r#"config={"primary":{"host":"db1.internal","port":5432}}"#,
    ]);
    bao.ok(&[
        "kv",
        "put",
        "secret/t-kv2/api",
        "value=CANARY-vault-api-8e02",
        "note=x",
    ]);
    bao.ok(&[
        "kv",
        "put",
        "secret/t-kv2/one",
        "token=CANARY-vault-one-77ad",
    ]);
    let p = Project::with_manifest(&format!(
        r#"{}
[secrets]
DB_USER = {{ backend = "vault", path = "t-kv2/db", key = "user" }}
DB_PASSWORD = {{ backend = "vault", path = "t-kv2/db", key = "password" }}
DB_HOST = {{ backend = "vault", path = "t-kv2/db", key = "/config/primary/host" }}
DB_PORT = {{ backend = "vault", path = "t-kv2/db", key = "/config/primary/port" }}
API_KEY = {{ backend = "vault", path = "t-kv2/api" }}
ONE = {{ backend = "vault", path = "t-kv2/one" }}
"#,
        backend(bao, "")
    ));
    let env = child_env(&p, &[], ROOT);
    assert_eq!(env["DB_USER"], "app");
    assert_eq!(env["DB_PASSWORD"], "CANARY-vault-pw-41c9");
    assert_eq!(env["DB_HOST"], "db1.internal");
    assert_eq!(env["DB_PORT"], "5432");
    assert_eq!(env["API_KEY"], "CANARY-vault-api-8e02");
    assert_eq!(env["ONE"], "CANARY-vault-one-77ad");
    assert!(
        !env.contains_key("VAULT_TOKEN"),
        "the Vault token reached the child"
    );

    // Six variables, three paths: three reads (and the KV-version lookup).
    let debug = p.run_env(&["-vv", "--", "true"], ROOT);
    debug.code(0).stderr_has("paths=3");

    // A successful run says nothing of its own (no dependency's debug lines either).
    let quiet = p.run_env(&["--", "true"], ROOT);
    quiet.code(0);
    assert!(quiet.stderr.is_empty(), "{}", quiet.stderr);

    // check: the KV version and its creation time, no values, even at trace level.
    let run = p.run_env(&["-vvv", "check"], ROOT);
    run.code(0).no_canary(true);
    run.stdout_has("ok (version 1, created 20");
    let run = p.run_env(&["check", "--json"], ROOT);
    run.code(0).no_canary(true);
    run.stdout_has("\"about\": \"created 20");

    // Without `key`, several fields and none named `value`: the names, not the values.
    let p = Project::with_manifest(&format!(
        "{}\n[secrets]\nDB = {{ backend = \"vault\", path = \"t-kv2/db\" }}\nMISS = {{ backend = \"vault\", path = \"t-kv2/db\", key = \"/config/primary/pass\" }}\n",
        backend(bao, "")
    ));
    let run = p.run_env(&["-vvv", "--", "true"], ROOT);
    run.code(65).no_canary(true);
    run.stderr_has("several fields (config, password, user)")
        .stderr_has("`/config/primary` has fields: host, port");
}

#[test]
fn kv1_mount_detected_or_configured_and_wrong_version_hints() {
    let bao = openbao::shared();
    bao.ok(&["secrets", "enable", "-path=kv1-t", "-version=1", "kv"]);
    bao.ok(&["kv", "put", "kv1-t/app", "value=v1-value"]);
    bao.ok(&["kv", "put", "secret/t-kv1/app", "value=v2-value"]);
    let manifest = |extra: &str| {
        Project::with_manifest(&format!(
            "{}\n[secrets]\nA = {{ backend = \"vault\", path = \"app\" }}\n",
            backend(bao, extra)
        ))
    };
    for extra in ["mount = \"kv1-t\"", "mount = \"kv1-t\"\nkv_version = 1"] {
        let env = child_env(&manifest(extra), &[], ROOT);
        assert_eq!(env["A"], "v1-value", "{extra}");
    }
    // A KV v1 mount read as v2, and a v2 mount read as v1: the error says which it is.
    let run = manifest("mount = \"kv1-t\"\nkv_version = 2").run_env(&["--", "true"], ROOT);
    run.code(65)
        .stderr_has("no secret at `app`")
        .stderr_has("mount `kv1-t/` is KV version 1");
    let run = manifest("prefix = \"t-kv1/\"\nkv_version = 1").run_env(&["--", "true"], ROOT);
    run.code(65).stderr_has("mount `secret/` is KV version 2");
    // A version pin on a KV v1 backend is a manifest error, before anything is read.
    let p = Project::with_manifest(&format!(
        "{}\n[secrets]\nA = {{ backend = \"vault\", path = \"app\", version = 1 }}\n",
        backend(bao, "mount = \"kv1-t\"\nkv_version = 1")
    ));
    p.run_env(&["--", "true"], ROOT)
        .code(78)
        .stderr_has("keeps no versions");
}

#[test]
fn version_pins_and_deleted_versions() {
    let bao = openbao::shared();
    bao.ok(&["kv", "put", "secret/t-ver/key", "value=first"]);
    bao.ok(&["kv", "put", "secret/t-ver/key", "value=second"]);
    bao.ok(&["kv", "put", "secret/t-ver/key", "value=third"]);
    bao.ok(&["kv", "delete", "-versions=2", "secret/t-ver/key"]);
    let p = Project::with_manifest(&format!(
        r#"{}
[secrets]
OLD = {{ backend = "vault", path = "t-ver/key", version = 1 }}
NOW = {{ backend = "vault", path = "t-ver/key" }}
"#,
        backend(bao, "prefix = \"\"")
    ));
    let env = child_env(&p, &[], ROOT);
    assert_eq!(env["OLD"], "first");
    assert_eq!(env["NOW"], "third");
    p.run_env(&["check"], ROOT)
        .code(0)
        .stdout_has("ok (version 1, created")
        .stdout_has("ok (version 3, created");

    let p = Project::with_manifest(&format!(
        "{}\n[secrets]\nGONE = {{ backend = \"vault\", path = \"t-ver/key\", version = 2 }}\n",
        backend(bao, "")
    ));
    p.run_env(&["--", "true"], ROOT)
        .code(65)
        .stderr_has("version 2 was deleted at");
}

#[test]
fn token_from_env_file_and_helper_file_and_never_to_the_child() {
    let bao = openbao::shared();
    bao.ok(&["token", "create", "-id=CANARY-token-5d1f0e", "-policy=root"]);
    bao.ok(&["kv", "put", "secret/t-token/k", "value=token-ok"]);
    let manifest = |extra: &str| {
        Project::with_manifest(&format!(
            "{}\n[secrets]\nK = {{ backend = \"vault\", path = \"t-token/k\" }}\n",
            backend(bao, extra)
        ))
    };
    let token = "CANARY-token-5d1f0e";

    // $VAULT_TOKEN and $BAO_TOKEN: used, and neither reaches the child.
    for var in ["VAULT_TOKEN", "BAO_TOKEN"] {
        let env = child_env(&manifest(""), &[], &[(var, token)]);
        assert_eq!(env["K"], "token-ok", "{var}");
        assert!(!env.contains_key(var), "{var} reached the child");
    }
    // At trace level, neither the token nor a value shows in secret-run's own output.
    manifest("")
        .run_env(&["-vvv", "check"], &[("VAULT_TOKEN", token)])
        .code(0)
        .no_canary(true);
    manifest("")
        .run_env(&["-vvv", "--", "true"], &[("VAULT_TOKEN", token)])
        .code(0)
        .no_canary(true);
    // token_file, relative to the manifest.
    let p = manifest("auth = { method = \"token\", token_file = \"vault-token\" }");
    p.write("vault-token", &format!("{token}\n"));
    assert_eq!(child_env(&p, &[], &[])["K"], "token-ok");
    // ~/.vault-token, as `bao login` leaves it.
    let p = manifest("");
    p.write(".vault-token", token);
    assert_eq!(child_env(&p, &[], &[])["K"], "token-ok");

    // The manifest may pass the token on, by naming it.
    let p = Project::with_manifest(&format!(
        "{}\n[env]\ninherit = [\"PATH\", \"VAULT_TOKEN\"]\n[secrets]\nK = {{ backend = \"vault\", path = \"t-token/k\" }}\n",
        backend(bao, "")
    ));
    let env = child_env(&p, &[], &[("VAULT_TOKEN", token)]);
    assert_eq!(env["VAULT_TOKEN"], token);

    // No token anywhere: permission denied, saying where to put one.
    manifest("")
        .run(&["--", "true"])
        .code(77)
        .stderr_has("no Vault token");
    // A wrong token: permission denied, never echoed.
    let run = manifest("").run_env(
        &["-vvv", "--", "true"],
        &[("VAULT_TOKEN", "CANARY-token-5d1f0e-wrong")],
    );
    run.code(77).stderr_has("the Vault token was refused");
    assert!(!run.stderr.contains("5d1f0e"), "{}", run.stderr);
    // VAULT_ADDR instead of `address`.
    let p = Project::with_manifest(
        "[backends.vault]\nkind = \"vault\"\n[secrets]\nK = { backend = \"vault\", path = \"t-token/k\" }\n",
    );
    let env = child_env(
        &p,
        &[],
        &[("VAULT_ADDR", &bao.addr), ("VAULT_TOKEN", token)],
    );
    assert_eq!(env["K"], "token-ok");
    p.run(&["--", "true"]).code(78).stderr_has("VAULT_ADDR");
}

/// An AppRole whose policy reads `secret/data/t-approle/allowed/*` and nothing else.
fn approle(bao: &Bao, mount: &str, role: &str, ttl: &str, max_ttl: &str) {
    bao.ok(&["auth", "enable", &format!("-path={mount}"), "approle"]);
    bao.policy(
        role,
        "path \"secret/data/t-approle/allowed/*\" { capabilities = [\"read\"] }\n",
    );
    bao.ok(&[
        "write",
        &format!("auth/{mount}/role/{role}"),
        &format!("token_policies={role}"),
        &format!("token_ttl={ttl}"),
        &format!("token_max_ttl={max_ttl}"),
    ]);
    bao.ok(&[
        "write",
        &format!("auth/{mount}/role/{role}/role-id"),
        &format!("role_id={role}-id"),
    ]);
    bao.ok(&[
        "write",
        &format!("auth/{mount}/role/{role}/custom-secret-id"),
        "secret_id=CANARY-secretid-a9b3",
    ]);
}

#[test]
fn approle_login_reads_what_the_policy_allows_and_is_denied_the_rest() {
    let bao = openbao::shared();
    approle(bao, "approle-t", "reader", "5m", "1h");
    bao.ok(&[
        "kv",
        "put",
        "secret/t-approle/allowed/db",
        "value=approle-ok",
    ]);
    bao.ok(&[
        "kv",
        "put",
        "secret/t-approle/denied/db",
        "value=CANARY-roleread-c3d4",
    ]);
    let manifest = |auth: &str, path: &str| {
        let p = Project::with_manifest(&format!(
            "{}\n[secrets]\nDB = {{ backend = \"vault\", path = \"{path}\" }}\n",
            backend(bao, &format!("auth = {auth}"))
        ));
        p.write("secret-id", "CANARY-secretid-a9b3\n");
        p
    };
    let file_auth = r#"{ method = "approle", mount = "approle-t", role_id = "reader-id", secret_id_file = "secret-id" }"#;
    let env = child_env(&manifest(file_auth, "t-approle/allowed/db"), &[], &[]);
    assert_eq!(env["DB"], "approle-ok");

    // The secret id from a variable: used, and not passed on.
    let env_auth = r#"{ method = "approle", mount = "approle-t", role_id = "reader-id", secret_id_env = "APPROLE_SECRET_ID" }"#;
    let env = child_env(
        &manifest(env_auth, "t-approle/allowed/db"),
        &[],
        &[("APPROLE_SECRET_ID", "CANARY-secretid-a9b3")],
    );
    assert_eq!(env["DB"], "approle-ok");
    assert!(!env.contains_key("APPROLE_SECRET_ID"));

    // Outside the policy: 403, naming the path and the capability it needs.
    let run = manifest(file_auth, "t-approle/denied/db").run(&["-vvv", "--", "true"]);
    run.code(77)
        .no_canary(true)
        .stderr_has("permission denied reading `secret/data/t-approle/denied/db`")
        .stderr_has("needs `read` on path \"secret/data/t-approle/denied/db\"");

    // A wrong secret id: the login is refused.
    let p = manifest(file_auth, "t-approle/allowed/db");
    p.write("secret-id", "not-the-secret-id");
    p.run(&["--", "true"])
        .code(77)
        .stderr_has("approle login at auth/approle-t/login was refused");
    // A missing secret-id file: named.
    let p = manifest(file_auth, "t-approle/allowed/db");
    std::fs::remove_file(p.path("secret-id")).unwrap();
    p.run(&["--", "true"]).code(77).stderr_has("secret-id");
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn jwt_login_with_a_key_pair_made_here() {
    let bao = openbao::shared();
    let p = Project::new();
    let key = p.path("key.pem");
    let public = p.path("pub.pem");
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    bao.ok(&["auth", "enable", "-path=jwt-t", "jwt"]);
    bao.ok(&[
        "write",
        "auth/jwt-t/config",
        &format!("jwt_validation_pubkeys=@{}", public.display()),
    ]);
    bao.policy(
        "jwt-reader",
        "path \"secret/data/t-jwt/*\" { capabilities = [\"read\"] }\n",
    );
    bao.ok(&[
        "write",
        "auth/jwt-t/role/ci",
        "role_type=jwt",
        "user_claim=sub",
        "bound_audiences=secret-run",
        "token_policies=jwt-reader",
        "token_ttl=5m",
    ]);
    bao.ok(&["kv", "put", "secret/t-jwt/deploy", "value=jwt-ok"]);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = base64url(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = base64url(
        format!(
            r#"{{"sub":"ci-job","aud":"secret-run","iat":{now},"nbf":{now},"exp":{}}}"#,
            now + 600
        )
        .as_bytes(),
    );
    let signing_input = format!("{header}.{claims}");
    p.write("signing-input", &signing_input);
    let signature = openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        key.to_str().unwrap(),
        p.path("signing-input").to_str().unwrap(),
    ]);
    let signature = base64url(&signature);
    p.write("jwt", &format!("{signing_input}.{signature}"));
    p.write(
        "secrets.toml",
        &format!(
            "{}\n[secrets]\nDEPLOY = {{ backend = \"vault\", path = \"t-jwt/deploy\" }}\n",
            backend(
                bao,
                r#"auth = { method = "jwt", mount = "jwt-t", role = "ci", jwt_file = "jwt" }"#
            )
        ),
    );
    let env = child_env(&p, &["-vvv"], &[]);
    assert_eq!(env["DEPLOY"], "jwt-ok");
    let run = p.run(&["-vvv", "check"]);
    run.code(0);
    assert!(
        !run.stderr.contains(&signature) && !run.stdout.contains(&signature),
        "the JWT leaked"
    );

    // A JWT for another audience is refused: permission denied.
    p.write(
        "secrets.toml",
        &format!(
            "{}\n[secrets]\nDEPLOY = {{ backend = \"vault\", path = \"t-jwt/deploy\" }}\n",
            backend(
                bao,
                r#"auth = { method = "jwt", mount = "jwt-t", role = "ci", jwt_env = "CI_JWT" }"#
            )
        ),
    );
    let env = child_env(
        &p,
        &[],
        &[("CI_JWT", &format!("{signing_input}.{signature}"))],
    );
    assert_eq!(env["DEPLOY"], "jwt-ok");
    assert!(!env.contains_key("CI_JWT"), "the JWT reached the child");
    p.run_env(&["--", "true"], &[("CI_JWT", "a.b.c")])
        .code(77)
        .stderr_has("jwt login at auth/jwt-t/login was refused");
}

#[test]
fn kubernetes_login_sends_the_service_account_token_to_its_mount() {
    // No Kubernetes API here to review the token, so the login cannot succeed; what is checked
    // is that secret-run reads the token file and reaches auth/kubernetes/login.
    let bao = openbao::shared();
    let ca = tempfile::tempdir().unwrap();
    let (key, cert) = (ca.path().join("k.pem"), ca.path().join("c.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=k8s",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bao.ok(&["auth", "enable", "-path=k8s-t", "kubernetes"]);
    bao.ok(&[
        "write",
        "auth/k8s-t/config",
        "kubernetes_host=https://127.0.0.1:1",
        "disable_local_ca_jwt=true",
        &format!("kubernetes_ca_cert=@{}", cert.display()),
    ]);
    bao.ok(&[
        "write",
        "auth/k8s-t/role/payments",
        "bound_service_account_names=app",
        "bound_service_account_namespaces=default",
        "token_policies=default",
    ]);
    let p = Project::with_manifest(&format!(
        "{}\n[secrets]\nK = {{ backend = \"vault\", path = \"x\" }}\n",
        backend(
            bao,
            r#"auth = { method = "kubernetes", mount = "k8s-t", role = "payments", jwt_file = "sa-token" }"#
        )
    ));
    p.run(&["--", "true"]).code(77).stderr_has("sa-token");
    p.write("sa-token", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln");
    let run = p.run(&["--", "true"]);
    assert!(matches!(run.code, Some(69) | Some(77)), "{run:?}");
    run.stderr_has("kubernetes login at auth/k8s-t/login");
}

#[test]
fn namespace_header() {
    let bao = openbao::shared();
    let out = bao.bao(&["namespace", "create", "ns-t"]);
    if !out.status.success() {
        eprintln!(
            "skipped: this OpenBao has no namespaces: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let ns = [("VAULT_NAMESPACE", "ns-t")];
    bao.ok_env(
        &["secrets", "enable", "-path=secret", "-version=2", "kv"],
        &ns,
    );
    bao.ok_env(&["kv", "put", "secret/t-ns/k", "value=in-namespace"], &ns);
    let manifest = |extra: &str| {
        Project::with_manifest(&format!(
            "{}\n[secrets]\nK = {{ backend = \"vault\", path = \"t-ns/k\" }}\n",
            backend(bao, extra)
        ))
    };
    assert_eq!(
        child_env(&manifest("namespace = \"ns-t\""), &[], ROOT)["K"],
        "in-namespace"
    );
    let env = child_env(
        &manifest(""),
        &[],
        &[("VAULT_TOKEN", ROOT_TOKEN), ("VAULT_NAMESPACE", "ns-t")],
    );
    assert_eq!(env["K"], "in-namespace");
    manifest("")
        .run_env(&["--", "true"], ROOT)
        .code(65)
        .stderr_has("no secret at `t-ns/k`");
}

#[test]
fn sealed_server_is_unavailable() {
    let bao = Bao::start(&[]);
    bao.ok(&["kv", "put", "secret/k", "value=v"]);
    bao.ok(&["operator", "seal"]);
    let p = Project::with_manifest(&format!(
        "{}\n[secrets]\nK = {{ backend = \"vault\", path = \"k\" }}\n",
        backend(&bao, "max_retries = 1")
    ));
    p.run_env(&["--", "true"], ROOT)
        .code(69)
        .stderr_has("sealed");
}

#[test]
fn killed_server_is_unavailable_within_the_deadline() {
    let mut bao = Bao::start(&[]);
    bao.ok(&["kv", "put", "secret/k", "value=v"]);
    let p = Project::with_manifest(&format!(
        "{}\n[secrets]\nK = {{ backend = \"vault\", path = \"k\" }}\n",
        backend(&bao, "")
    ));
    assert_eq!(child_env(&p, &[], ROOT)["K"], "v");
    bao.stop();
    let started = Instant::now();
    p.run_env(&["--timeout", "10s", "--", "true"], ROOT)
        .code(69)
        .stderr_has(&format!("cannot reach {}", bao.addr))
        .stderr_has("Connection refused");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// A listener that accepts connections and never answers.
fn silent_listener() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    port
}

#[test]
fn a_server_that_never_answers_is_cut_off() {
    let port = silent_listener();
    let p = Project::with_manifest(&format!(
        "[backends.vault]\nkind = \"vault\"\naddress = \"http://127.0.0.1:{port}\"\nrequest_timeout = \"1s\"\n[secrets]\nK = {{ backend = \"vault\", path = \"k\" }}\n"
    ));
    let started = Instant::now();
    p.run_env(&["--timeout", "3s", "--", "true"], ROOT)
        .code(69)
        .stderr_has("did not answer");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    // `check` is bounded the same way.
    p.run_env(&["--timeout", "2s", "check"], ROOT).code(69);
}

/// A loopback fake for what a real server cannot be made to do on demand: it answers each
/// request with the next of `replies` (status, body), then 200 with a KV v2 secret.
/// Counts the reads of `/v1/secret/data/k`; anything else gets a 403.
fn fake_vault(replies: Vec<(u16, &'static str)>) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    std::thread::spawn(move || {
        for stream in l.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let mut s = stream;
            if !request_line.starts_with("GET /v1/secret/data/k ") {
                let _ = write!(
                    s,
                    "HTTP/1.1 403 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                continue;
            }
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let (status, body) = replies.get(n).copied().unwrap_or((
                200,
                r#"{"data":{"data":{"value":"after-retries"},"metadata":{"version":7,"created_time":"2026-01-01T00:00:00Z"}}}"#,
            ));
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, count)
}

#[test]
fn retries_on_503_and_429_but_never_on_403() {
    let manifest = |port: u16| {
        Project::with_manifest(&format!(
            "[backends.vault]\nkind = \"vault\"\naddress = \"http://127.0.0.1:{port}\"\nkv_version = 2\n[secrets]\nK = {{ backend = \"vault\", path = \"k\" }}\n"
        ))
    };
    let (port, count) = fake_vault(vec![
        (503, r#"{"errors":["Vault is sealed"]}"#),
        (429, r#"{"errors":["rate limited"]}"#),
        (500, r#"{"errors":["internal error"]}"#),
    ]);
    assert_eq!(child_env(&manifest(port), &[], ROOT)["K"], "after-retries");
    assert_eq!(count.load(Ordering::SeqCst), 4);

    let (port, count) = fake_vault(vec![(403, r#"{"errors":["permission denied"]}"#)]);
    manifest(port).run_env(&["--", "true"], ROOT).code(77);
    assert_eq!(count.load(Ordering::SeqCst), 1, "a 403 was retried");

    // Retries end: after max_retries the last 503 is the answer.
    let (port, count) = fake_vault(vec![(503, r#"{"errors":["Vault is sealed"]}"#); 10]);
    let p = Project::with_manifest(&format!(
        "[backends.vault]\nkind = \"vault\"\naddress = \"http://127.0.0.1:{port}\"\nkv_version = 2\nmax_retries = 2\n[secrets]\nK = {{ backend = \"vault\", path = \"k\" }}\n"
    ));
    p.run_env(&["--", "true"], ROOT)
        .code(69)
        .stderr_has("sealed");
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[test]
fn tls_is_verified_against_the_configured_ca() {
    let bao = Bao::start(&["-dev-tls"]);
    bao.ok(&["kv", "put", "secret/k", "value=over-tls"]);
    let manifest = |extra: &str| {
        Project::with_manifest(&format!(
            "{}\n[secrets]\nK = {{ backend = \"vault\", path = \"k\" }}\n",
            backend(&bao, extra)
        ))
    };
    let ca = format!("ca_cert = \"{}\"", bao.ca_cert().display());
    assert_eq!(child_env(&manifest(&ca), &[], ROOT)["K"], "over-tls");
    // $VAULT_CACERT does the same.
    let ca_env = bao.ca_cert().display().to_string();
    let env = child_env(
        &manifest(""),
        &[],
        &[("VAULT_TOKEN", ROOT_TOKEN), ("VAULT_CACERT", &ca_env)],
    );
    assert_eq!(env["K"], "over-tls");
    // The dev CA is nobody's root: refused.
    manifest("max_retries = 0")
        .run_env(&["--", "true"], ROOT)
        .code(69)
        .stderr_has(&format!("cannot reach {}", bao.addr))
        .stderr_has("certificate");
    // Only when asked explicitly, and with a warning every time.
    let run = manifest("").run_env(
        &["--", "true"],
        &[("VAULT_TOKEN", ROOT_TOKEN), ("VAULT_SKIP_VERIFY", "true")],
    );
    run.code(0).stderr_has("NOT verified");
}

#[test]
fn login_tokens_are_renewed_and_replaced_while_the_child_runs() {
    let bao = openbao::shared();
    // A 3 s TTL: without renewal the token would be dead long before the child ends. Its max
    // TTL of 5 s forces a new login too.
    approle(bao, "approle-renew", "renewer", "3s", "5s");
    bao.ok(&["kv", "put", "secret/t-approle/allowed/r", "value=renew-ok"]);
    let p = Project::with_manifest(&format!(
        "{}\n[secrets]\nR = {{ backend = \"vault\", path = \"t-approle/allowed/r\" }}\n",
        backend(
            bao,
            r#"auth = { method = "approle", mount = "approle-renew", role_id = "renewer-id", secret_id_file = "secret-id" }"#
        )
    ));
    p.write("secret-id", "CANARY-secretid-a9b3");
    let run = p.run(&["-vv", "--", "sh", "-c", "sleep 7; echo \"$R\""]);
    run.code(0).stdout_has("renew-ok");
    run.stderr_has("Vault token renewed")
        .stderr_has("logged in again for a new Vault token")
        .no_canary(false);
}

#[test]
fn a_reply_read_with_the_wrong_kv_version_is_not_quoted_in_the_error() {
    // A KV v1 mount read as v2: `data/app` holds a field `metadata` whose string cannot be the
    // v2 metadata object. The deserializer's message would quote it; the error must not.
    let bao = openbao::shared();
    bao.ok(&["secrets", "enable", "-path=kv1-scrub", "-version=1", "kv"]);
    bao.ok(&[
        "kv",
        "put",
        "kv1-scrub/data/app",
        "metadata=CANARY-vault-pw-41c9",
    ]);
    let p = Project::with_manifest(&format!(
        "{}\n[secrets]\nX = {{ backend = \"vault\", path = \"app\" }}\n",
        backend(bao, "mount = \"kv1-scrub\"\nkv_version = 2")
    ));
    for args in [&["--", "true"][..], &["check"], &["check", "--json"]] {
        let r = p.run_env(args, ROOT);
        r.code(69).no_canary(true);
        let said = format!("{}{}", r.stdout, r.stderr);
        assert!(said.contains("invalid type: a string"), "{said}");
        assert!(said.contains("kv_version = 1"), "{said}");
    }
}

#[test]
fn a_rate_limit_is_waited_out_within_the_deadline_whatever_max_retries_says() {
    // An OpenBao of its own: a rate-limit quota on `secret/` would slow every other test.
    let bao = Bao::start(&[]);
    for i in 1..=6 {
        bao.ok(&[
            "kv",
            "put",
            &format!("secret/t-quota/s{i}"),
            &format!("value=v{i}"),
        ]);
    }
    bao.ok(&[
        "write",
        "sys/quotas/rate-limit/slow",
        "path=secret/",
        "rate=2",
        "interval=1s",
    ]);
    let mut secrets = String::new();
    for i in 1..=6 {
        secrets.push_str(&format!(
            "S{i} = {{ backend = \"vault\", path = \"t-quota/s{i}\" }}\n"
        ));
    }
    let p = Project::with_manifest(&format!(
        "{}[secrets]\n{secrets}",
        backend(&bao, "max_retries = 1")
    ));
    // Six reads at two a second: 429s for a few seconds, more than one retry each.
    let dump = child_env(&p, &["-v"], ROOT);
    assert_eq!(dump["S6"], "v6");
    // Past the deadline it is an outage that says what to do (one read a second: six take
    // longer than the 2 s allowed).
    bao.ok(&[
        "write",
        "sys/quotas/rate-limit/slow",
        "path=secret/",
        "rate=1",
        "interval=1s",
    ]);
    let q = Project::with_manifest(&format!("{}[secrets]\n{secrets}", backend(&bao, "")));
    q.run_env(&["--timeout", "2s", "--", "true"], ROOT)
        .code(69)
        .stderr_has("the server is rate-limiting; raise `--timeout`");
}
