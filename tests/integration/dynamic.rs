//! Issued credentials: OpenBao's database secrets engine against a real PostgreSQL (each test its
//! own server and mount), and its PKI engine behind a real nginx. Leases are short (seconds) so
//! that renewal, replacement at the maximum TTL and revocation all happen within a test.

#![cfg(feature = "vault")]

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::openbao::{Bao, ROOT_TOKEN};
use crate::postgres::{Postgres, postgres};
use crate::support::{Project, Supervised, poll_until, script, wait_until};

const ADMIN_PASSWORD: &str = "pg-admin-pw";

/// A database mount of its own in `bao`, whose role `app` issues PostgreSQL users.
struct Database {
    pg: Postgres,
    mount: String,
}

fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{what}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn database(bao: &Bao, p: &Project, default_ttl: &str, max_ttl: &str) -> Database {
    let pg = postgres(p, ADMIN_PASSWORD);
    let mount = unique("db");
    bao.ok(&["secrets", "enable", "-path", &mount, "database"]);
    bao.ok(&[
        "write",
        &format!("{mount}/config/pg"),
        "plugin_name=postgresql-database-plugin",
        &format!(
            "connection_url=postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable",
            pg.port
        ),
        "username=app",
        &format!("password={ADMIN_PASSWORD}"),
        "allowed_roles=*",
    ]);
    bao.ok(&[
        "write",
        &format!("{mount}/roles/app"),
        "db_name=pg",
        "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT CONNECT ON DATABASE postgres TO \"{{name}}\";",
        &format!("default_ttl={default_ttl}"),
        &format!("max_ttl={max_ttl}"),
    ]);
    Database { pg, mount }
}

impl Database {
    /// A query as PostgreSQL's superuser.
    fn admin(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .env("PGPASSWORD", ADMIN_PASSWORD)
            .args(["-h", "127.0.0.1", "-p", &self.pg.port.to_string()])
            .args(["-U", "app", "-d", "postgres", "-w", "-tAc", sql])
            .output()
            .expect("psql (scripts/install-test-servers installs it)");
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The users the engine created that still exist.
    fn issued_users(&self) -> Vec<String> {
        let out = self.admin("select rolname from pg_roles where rolname like 'v-%' order by 1");
        out.lines().map(str::to_owned).collect()
    }

    /// The ids of the engine's leases OpenBao still holds.
    fn leases(&self, bao: &Bao) -> Vec<String> {
        let out = bao.bao(&[
            "list",
            "-format=json",
            &format!("sys/leases/lookup/{}/creds/app/", self.mount),
        ]);
        serde_json::from_slice::<Vec<String>>(&out.stdout).unwrap_or_default()
    }

    /// A lease's expire time, as OpenBao reports it.
    fn expire_time(&self, bao: &Bao, id: &str) -> String {
        let out = bao.ok(&[
            "write",
            "-format=json",
            "sys/leases/lookup",
            &format!("lease_id={}/creds/app/{id}", self.mount),
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["data"]["expire_time"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn manifest(&self, run: &str) -> String {
        format!(
            "[audit]\npath = \"audit.log\"\n\n[backends.vault]\nkind = \"vault\"\n\n[secrets]\n\
             DB_USER = {{ backend = \"vault\", path = \"{m}/creds/app\", key = \"username\" }}\n\
             DB_PASSWORD = {{ backend = \"vault\", path = \"{m}/creds/app\", key = \"password\" }}\n\n[run]\n{run}\n",
            m = self.mount
        )
    }
}

/// A service that logs into PostgreSQL with its credentials every 0.3 s, writes each outcome,
/// says it is ready after its first login, and takes a moment to stop.
fn service(p: &Project, db: &Database) -> std::path::PathBuf {
    script(
        p,
        "service.sh",
        &format!(
            r#"echo "$DB_USER" >> users.log
trap 'sleep 0.2; exit 0' TERM
while :; do
  if PGPASSWORD="$DB_PASSWORD" psql -h 127.0.0.1 -p {port} -U "$DB_USER" -d postgres -w -tAc 'select 1' >/dev/null 2>>psql.err
  then echo "ok $DB_USER" >> logins.log; touch "ready.$$"
  else echo "FAIL $DB_USER" >> logins.log
  fi
  sleep 0.3
done"#,
            port = db.pg.port
        ),
    )
}

fn env(bao: &Bao) -> Vec<(&str, &str)> {
    vec![
        ("VAULT_ADDR", bao.addr.as_str()),
        ("VAULT_TOKEN", ROOT_TOKEN),
    ]
}

fn audit(p: &Project) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p.path("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn events<'a>(records: &'a [serde_json::Value], word: &str) -> Vec<&'a serde_json::Value> {
    records.iter().filter(|r| r["event"] == word).collect()
}

fn users(p: &Project) -> Vec<String> {
    std::fs::read_to_string(p.path("users.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn issued_database_users_are_renewed_replaced_with_overlap_and_revoked_at_exit() {
    let bao = crate::openbao::shared();
    let p = Project::new();
    // Renewed at 4 s and 8 s; at 12 s a renewal grants less than asked (16 s is the most).
    let db = database(bao, &p, "6s", "16s");
    p.write(
        "secrets.toml",
        &db.manifest(
            "on_change = \"overlap\"\nready = { cmd = [\"sh\", \"-c\", \"test -f ready.$SECRET_RUN_CHILD_PID\"] }",
        ),
    );
    let service = service(&p, &db);
    let run = Supervised::start_env(&p, &["--", service.to_str().unwrap()], &env(bao));
    wait_until("the first login", Duration::from_secs(15), || {
        std::fs::read_to_string(p.path("logins.log")).is_ok_and(|l| l.contains("ok "))
    });
    let first = users(&p)[0].clone();
    assert!(
        db.issued_users().contains(&first),
        "the user exists while the child runs"
    );
    // The lease's expire time moves when secret-run renews it.
    let leases = db.leases(bao);
    assert_eq!(leases.len(), 1, "one lease for both variables: {leases:?}");
    let before = db.expire_time(bao, &leases[0]);
    wait_until("a renewal", Duration::from_secs(10), || {
        db.expire_time(bao, &leases[0]) != before
    });
    // At the maximum TTL: a second user, the hand-over, the first user gone.
    wait_until("new credentials", Duration::from_secs(20), || {
        users(&p).len() >= 2
    });
    let second = users(&p)[1].clone();
    assert_ne!(first, second);
    wait_until(
        "the first user to be revoked",
        Duration::from_secs(10),
        || !db.issued_users().contains(&first),
    );
    assert!(db.issued_users().contains(&second));
    let logins = std::fs::read_to_string(p.path("logins.log")).unwrap();
    assert!(
        logins.lines().any(|l| l == format!("ok {second}")),
        "{logins}"
    );
    let stderr = run.stop_expecting(0);
    // Every login of either child succeeded: no gap in the hand-over.
    let logins = std::fs::read_to_string(p.path("logins.log")).unwrap();
    assert!(
        !logins.contains("FAIL"),
        "{logins}\n{}",
        std::fs::read_to_string(p.path("psql.err")).unwrap_or_default()
    );
    // At exit every lease is revoked and its user dropped.
    assert!(db.issued_users().is_empty(), "{:?}", db.issued_users());
    assert!(db.leases(bao).is_empty());
    let records = audit(&p);
    assert_eq!(events(&records, "lease-issue").len(), 2, "{records:?}");
    assert!(!events(&records, "lease-renew").is_empty());
    let expiring = events(&records, "lease-expiring");
    assert_eq!(expiring[0]["reason"], "max-ttl");
    assert_eq!(events(&records, "lease-revoke").len(), 2);
    assert!(
        events(&records, "reload")
            .iter()
            .any(|r| r["trigger"] == "lease")
    );
    // Each child is recorded with the credential it received; ids only by their path.
    let uses = events(&records, "lease-use");
    assert_eq!(uses.len(), 2);
    for r in &records {
        if let Some(lease) = r["lease"].as_str() {
            assert!(
                lease.starts_with(&format!("{}/creds/app/…", db.mount)),
                "{lease}"
            );
            assert!(!leases[0].is_empty() && !lease.contains(&leases[0]));
        }
    }
    let log = std::fs::read_to_string(p.path("audit.log")).unwrap();
    for user in [&first, &second] {
        assert!(!stderr.contains(user.as_str()) && !log.contains(user.as_str()));
    }
}

#[test]
fn leases_are_revoked_when_the_child_exits_by_itself_and_its_code_is_kept() {
    let bao = crate::openbao::shared();
    let p = Project::new();
    let db = database(bao, &p, "1m", "5m");
    p.write("secrets.toml", &db.manifest(""));
    let service = script(
        &p,
        "once.sh",
        &format!(
            "echo \"$DB_USER\" >> users.log\nPGPASSWORD=\"$DB_PASSWORD\" psql -h 127.0.0.1 -p {} -U \"$DB_USER\" -d postgres -w -tAc 'select 40 + 2' > answer || exit 9\nexit 3",
            db.pg.port
        ),
    );
    let run = Supervised::start_env(&p, &["--", service.to_str().unwrap()], &env(bao));
    let (code, stderr) = run.wait(Duration::from_secs(30));
    assert_eq!(code, 3, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(p.path("answer")).unwrap().trim(),
        "42"
    );
    assert!(db.issued_users().is_empty(), "{:?}", db.issued_users());
    assert!(db.leases(bao).is_empty());
}

#[test]
fn a_failed_reload_keeps_the_lease_and_the_stop_after_it_revokes_it() {
    let bao = crate::openbao::shared();
    let p = Project::new();
    let db = database(bao, &p, "1m", "5m");
    let kv = unique("dyn-app");
    bao.ok(&["kv", "put", &format!("secret/{kv}"), "value=k1"]);
    let manifest =
        db.manifest("") + &format!("\n[secrets.APP_KEY]\nbackend = \"vault\"\npath = \"{kv}\"\n");
    p.write("secrets.toml", &manifest);
    let service = service(&p, &db);
    let run = Supervised::start_env(&p, &["--", service.to_str().unwrap()], &env(bao));
    wait_until("the first login", Duration::from_secs(15), || {
        std::fs::read_to_string(p.path("logins.log")).is_ok_and(|l| l.contains("ok "))
    });
    bao.ok(&["kv", "metadata", "delete", &format!("secret/{kv}")]);
    run.signal(Signal::SIGHUP);
    wait_until("the failed reload", Duration::from_secs(10), || {
        events(&audit(&p), "reload")
            .iter()
            .any(|r| r["outcome"] == "failed")
    });
    // The reload kept the live credential: nothing new was issued, the child runs on.
    assert_eq!(users(&p).len(), 1);
    assert_eq!(db.issued_users().len(), 1);
    run.stop_expecting(0);
    assert!(db.issued_users().is_empty(), "{:?}", db.issued_users());
    assert!(db.leases(bao).is_empty());
}

#[test]
fn with_openbao_down_the_child_runs_past_the_lease_and_max_stale_refuses_a_restart() {
    let mut bao = Bao::start(&[]);
    let p = Project::new();
    let db = database(&bao, &p, "3s", "1h");
    p.write(
        "secrets.toml",
        &db.manifest("restart_on_exit = \"on-failure\"\nmax_stale = \"1s\""),
    );
    let service = service(&p, &db);
    let addr = bao.addr.clone();
    let run = Supervised::start_env(
        &p,
        &["--", service.to_str().unwrap()],
        &[("VAULT_ADDR", &addr), ("VAULT_TOKEN", ROOT_TOKEN)],
    );
    wait_until("a renewal", Duration::from_secs(15), || {
        !events(&audit(&p), "lease-renew").is_empty()
    });
    bao.stop();
    wait_until("the lease's end", Duration::from_secs(15), || {
        !events(&audit(&p), "lease-expired").is_empty()
    });
    let records = audit(&p);
    assert!(!events(&records, "lease-renew-failed").is_empty());
    let child = events(&records, "start")[0]["pid"].as_i64().unwrap() as i32;
    let alive =
        std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|s| !s.contains(") Z "));
    assert!(alive, "the child keeps running past its lease's end");
    // It fails now: its values are older than max_stale and OpenBao is down: no restart.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), Signal::SIGKILL).unwrap();
    wait_until("the refused restart", Duration::from_secs(15), || {
        !events(&audit(&p), "stale-refused").is_empty()
    });
    // The revocation at exit fails (OpenBao is down): said, and the exit code is the child's.
    let stderr = run.stop_expecting(137);
    assert!(stderr.contains("could not revoke"), "{stderr}");
    assert!(!events(&audit(&p), "lease-revoke-failed").is_empty());
}

#[test]
fn exec_injects_issued_credentials_and_warns_that_nothing_renews_or_revokes_them() {
    let bao = crate::openbao::shared();
    let p = Project::new();
    let db = database(bao, &p, "1m", "5m");
    p.write("secrets.toml", &db.manifest(""));
    let r = p.run_env(
        &[
            "--exec",
            "--",
            "sh",
            "-c",
            &format!(
                "PGPASSWORD=\"$DB_PASSWORD\" psql -h 127.0.0.1 -p {} -U \"$DB_USER\" -d postgres -w -tAc 'select current_user'",
                db.pg.port
            ),
        ],
        &env(bao),
    );
    r.code(0)
        .stdout_has("v-")
        .stderr_has("not renewed or revoked");
    // Left to its TTL: the user is still there after the command ended.
    assert_eq!(db.issued_users().len(), 1);
    assert_eq!(db.leases(bao).len(), 1);
    // At trace level too, neither the password nor the lease id appears in secret-run's output.
    let r = p.run_env(
        &[
            "-vvv",
            "--exec",
            "--",
            "sh",
            "-c",
            "printf %s \"$DB_PASSWORD\" > pw; printf %s \"$DB_USER\" > user",
        ],
        &env(bao),
    );
    r.code(0);
    let (password, user) = (
        std::fs::read_to_string(p.path("pw")).unwrap(),
        std::fs::read_to_string(p.path("user")).unwrap(),
    );
    assert!(password.len() > 8 && user.starts_with("v-"));
    for lease in db.leases(bao) {
        assert!(!r.stderr.contains(&lease), "the lease id leaked");
    }
    assert!(!r.stderr.contains(&password) && !r.stderr.contains(&user));
    assert!(r.stderr.contains("TRACE"), "trace level was on");
    // A command that cannot start uses nothing: what was issued for it is revoked.
    p.run_env(&["--exec", "--", "./no-such-command"], &env(bao))
        .code(127);
    assert_eq!(db.issued_users().len(), 2, "{:?}", db.issued_users());
    assert_eq!(db.leases(bao).len(), 2);
}

#[test]
fn check_mints_nothing_unless_asked_and_then_revokes_what_it_issued() {
    let bao = crate::openbao::shared();
    let p = Project::new();
    let db = database(bao, &p, "1m", "5m");
    p.write("secrets.toml", &db.manifest(""));
    let r = p.run_env(&["check"], &env(bao));
    r.code(0).stdout_has("not-issued").stdout_has("--issue");
    assert!(db.issued_users().is_empty() && db.leases(bao).is_empty());
    let r = p.run_env(&["check", "--issue"], &env(bao));
    r.code(0)
        .stdout_has("lease 1m, renewable")
        .stdout_has("1 credential(s) issued for this check; 1 lease(s) revoked");
    assert!(db.issued_users().is_empty(), "{:?}", db.issued_users());
    assert!(db.leases(bao).is_empty());
    let json = p.run_env(&["check", "--json"], &env(bao));
    json.code(0).stdout_has("\"status\": \"not-issued\"");
}

#[test]
fn bad_dynamic_entries_are_refused_with_the_path_and_the_reason() {
    let bao = crate::openbao::shared();
    let pki = pki(bao);
    let db_mount = unique("dbx");
    bao.ok(&["secrets", "enable", "-path", &db_mount, "database"]);
    let p = Project::new();
    let cases = [
        (
            format!(
                "{{ backend = \"vault\", path = \"{pki}/issue/web\", key = \"certificate\", params = {{ common_name = \"evil.example\" }} }}"
            ),
            65,
            vec![
                format!("`{pki}/issue/web` refused the request"),
                "common name evil.example not allowed by this role".to_owned(),
            ],
        ),
        (
            "{ backend = \"vault\", path = \"kv-thing\", params = { ttl = \"1h\" } }".to_owned(),
            65,
            vec!["`params` go to an issuing endpoint, but `kv-thing` is a KV secret".to_owned()],
        ),
        (
            format!("{{ backend = \"vault\", path = \"{db_mount}/creds/app\", version = 3 }}"),
            65,
            vec![
                format!(
                    "`{db_mount}/creds/app` is a path of the `database` secrets engine, not a KV secret"
                ),
                "remove `version`".to_owned(),
            ],
        ),
        (
            format!("{{ backend = \"vault\", path = \"{db_mount}/creds/nope\" }}"),
            65,
            vec![format!("{db_mount}/creds/nope")],
        ),
        (
            "{ path = \"x\", params = { a = 1 } }".to_owned(),
            78,
            vec!["kind dotenv) reads stored values and takes no `params`".to_owned()],
        ),
        (
            "{ backend = \"vault\", path = \"x\", params = { a = 1 }, version = 2 }".to_owned(),
            78,
            vec!["remove `version`".to_owned()],
        ),
    ];
    for (entry, code, needles) in cases {
        p.write(
            "secrets.toml",
            &format!("[backends.vault]\nkind = \"vault\"\n\n[secrets]\nX = {entry}\n"),
        );
        let r = p.run_env(&["--", "true"], &env(bao));
        r.code(code);
        for n in &needles {
            r.stderr_has(n);
        }
    }
}

/// A PKI mount of its own: a root CA, and a role `web` for `app.internal` (certificates of up to
/// an hour, not backdated, so that they live exactly their TTL).
fn pki(bao: &Bao) -> String {
    let pki = unique("pki");
    bao.ok(&["secrets", "enable", "-path", &pki, "pki"]);
    bao.ok(&["secrets", "tune", "-max-lease-ttl=24h", &pki]);
    bao.ok(&[
        "write",
        &format!("{pki}/root/generate/internal"),
        "common_name=test-root",
        "ttl=24h",
    ]);
    bao.ok(&[
        "write",
        &format!("{pki}/roles/web"),
        "allowed_domains=app.internal",
        "allow_bare_domains=true",
        "max_ttl=1h",
        // No backdating: the certificate lives exactly its TTL.
        "not_before_duration=1s",
    ]);
    pki
}

/// The serial number of the certificate a TLS client sees on `port`, if the handshake succeeds.
fn served_serial(port: u16) -> Option<String> {
    crate::support::served_certificate(port, "-serial").filter(|s| s.starts_with("serial="))
}

#[test]
fn nginx_serves_a_pki_certificate_that_is_re_issued_before_it_expires() {
    let bao = crate::openbao::shared();
    let pki = pki(bao);
    let p = Project::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nginx-tls");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    p.write(
        "nginx.conf.tmpl",
        &std::fs::read_to_string(example.join("nginx.conf.tmpl"))
            .unwrap()
            .replace("127.0.0.1:8443", &format!("127.0.0.1:{port}")),
    );
    // Valid 9 s: re-issued at about 6 s.
    let params = "params = { common_name = \"app.internal\", ttl = \"9s\" }";
    p.write(
        "secrets.toml",
        &format!(
            "[audit]\npath = \"audit.log\"\n\n[backends.vault]\nkind = \"vault\"\n\n[secrets]\n\
             TLS_CERT = {{ backend = \"vault\", path = \"{pki}/issue/web\", key = \"certificate\", as_file = true, {params} }}\n\
             TLS_KEY = {{ backend = \"vault\", path = \"{pki}/issue/web\", key = \"private_key\", as_file = true, {params} }}\n\n\
             [files.\"nginx.conf\"]\ntemplate = \"nginx.conf.tmpl\"\nenv = \"NGINX_CONF\"\n\n\
             [run]\non_change = \"signal\"\nchild_signal = \"SIGHUP\"\n"
        ),
    );
    let xdg = p.path("xdg");
    std::fs::create_dir_all(&xdg).unwrap();
    let nginx = if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    };
    let mut vars = env(bao);
    let xdg = xdg.display().to_string();
    vars.push(("XDG_RUNTIME_DIR", &xdg));
    let run = Supervised::start_env(
        &p,
        &[
            "--",
            "sh",
            "-c",
            &format!("exec {nginx} -p \"$PWD/\" -e stderr -c \"$NGINX_CONF\""),
        ],
        &vars,
    );
    let mut first = None;
    wait_until("nginx to serve", Duration::from_secs(15), || {
        first = served_serial(port);
        first.is_some()
    });
    let first = first.unwrap();
    // Clients all along: every handshake succeeds, and the serial changes before 9 s.
    let started = std::time::Instant::now();
    let (mut ok, mut failed) = (0, 0);
    let mut second = None;
    while started.elapsed() < Duration::from_secs(12) && second.is_none() {
        match served_serial(port) {
            Some(s) if s != first => second = Some(s),
            Some(_) => ok += 1,
            None => failed += 1,
        }
    }
    assert!(second.is_some(), "the certificate was not re-issued");
    assert_eq!(failed, 0, "failed handshakes ({ok} succeeded)");
    assert!(
        poll_until(Duration::from_secs(1), || served_serial(port).is_some()),
        "nginx serves after the re-issue"
    );
    run.stop_expecting(0);
    let records = audit(&p);
    let expiring = events(&records, "lease-expiring");
    assert_eq!(expiring[0]["reason"], "certificate", "{records:?}");
    assert_eq!(
        expiring[0]["lease"],
        format!("{pki}/issue/web (certificate)")
    );
    assert!(!events(&records, "signal").is_empty());
}

#[test]
fn credentials_issued_under_a_login_are_replaced_when_a_new_login_replaces_its_token() {
    let bao = crate::openbao::shared();
    let p = Project::new();
    let db = database(bao, &p, "1m", "5m");
    // A token that lives 6 s and cannot be renewed past that: secret-run logs in again at
    // about 4 s, and Vault revokes the first token's leases when it ends at 6 s.
    let auth = unique("approle");
    let role = unique("dynrole");
    bao.ok(&["auth", "enable", &format!("-path={auth}"), "approle"]);
    bao.policy(
        &role,
        &format!(
            "path \"{}/creds/app\" {{ capabilities = [\"read\"] }}\npath \"sys/leases/revoke\" {{ capabilities = [\"update\"] }}\n",
            db.mount
        ),
    );
    bao.ok(&[
        "write",
        &format!("auth/{auth}/role/{role}"),
        &format!("token_policies={role}"),
        "token_ttl=6s",
        "token_max_ttl=6s",
    ]);
    bao.ok(&[
        "write",
        &format!("auth/{auth}/role/{role}/role-id"),
        &format!("role_id={role}-id"),
    ]);
    bao.ok(&[
        "write",
        &format!("auth/{auth}/role/{role}/custom-secret-id"),
        "secret_id=dyn-secret-id",
    ]);
    p.write("secret-id", "dyn-secret-id");
    let manifest = db.manifest("").replace(
        "kind = \"vault\"\n",
        &format!(
            "kind = \"vault\"\nauth = {{ method = \"approle\", mount = \"{auth}\", role_id = \"{role}-id\", secret_id_file = \"secret-id\" }}\n"
        ),
    );
    p.write("secrets.toml", &manifest);
    let service = service(&p, &db);
    let run = Supervised::start_env(
        &p,
        &["--", service.to_str().unwrap()],
        &[("VAULT_ADDR", bao.addr.as_str())],
    );
    wait_until(
        "credentials from the second login",
        Duration::from_secs(20),
        || users(&p).len() >= 2,
    );
    let [first, second] = [users(&p)[0].clone(), users(&p)[1].clone()];
    wait_until("the first user to be gone", Duration::from_secs(10), || {
        !db.issued_users().contains(&first)
    });
    // Well past the first token's end: the service still logs in, with the second user.
    std::thread::sleep(Duration::from_secs(3));
    assert!(db.issued_users().contains(&second) || users(&p).len() > 2);
    run.stop_expecting(0);
    let records = audit(&p);
    assert!(
        events(&records, "lease-expiring")
            .iter()
            .any(|r| r["reason"] == "token-replaced"),
        "{records:?}"
    );
}
