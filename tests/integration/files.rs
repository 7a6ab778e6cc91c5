//! Secrets as files and templates (issue 11): `as_file`, `template`, `[files]`, rewritten on
//! rotation, removed at exit. With real programs: nginx serving TLS from certificate files
//! (the example in examples/nginx-tls, its certificate in OpenBao), psql logging into a real
//! PostgreSQL with a rendered PGPASSFILE.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::postgres::postgres;
use crate::support::{Project, Supervised, wait_until};

/// A project whose private files go under its own XDG_RUNTIME_DIR.
fn xdg(p: &Project) -> (String, String) {
    let dir = p.path("xdg");
    std::fs::create_dir_all(&dir).unwrap();
    ("XDG_RUNTIME_DIR".into(), dir.display().to_string())
}

fn run_with_xdg(p: &Project, args: &[&str]) -> crate::support::Run {
    let (k, v) = xdg(p);
    p.run_env(args, &[(&k, &v)])
}

#[test]
fn as_file_template_and_files_reach_the_child_with_their_modes() {
    let p = Project::with_manifest(
        "[secrets]\nDB_USER = \"db/user\"\nDB_PASSWORD = \"db/password\"\nTLS_KEY = { path = \"tls/key\", as_file = true }\nBIG = { path = \"big\", as_file = true, mode = \"0440\" }\nDATABASE_URL = { template = \"postgres://{{ DB_USER }}:{{ DB_PASSWORD | urlencode }}@db:5432/app\" }\nKEY_NOTE = { template = \"key in {{ TLS_KEY }}\" }\n[files.\"pgpass\"]\ntemplate = \"templates/pgpass.tmpl\"\nmode = \"0600\"\nenv = \"PGPASSFILE\"\n[files.\"conf/key.pem\"]\nsource = \"TLS_KEY\"\n",
    );
    // 200 KB: more than an environment string may hold, fine as a file.
    let big = "b".repeat(200_000);
    p.write(
        ".env",
        &format!("DB_USER=app\nDB_PASSWORD=p@ss/w:rd%\nTLS_KEY=CANARY-file-b41e20\nBIG={big}\n"),
    );
    p.write(
        "templates/pgpass.tmpl",
        "db:5432:app:{{ DB_USER }}:{{ DB_PASSWORD }}\n",
    );
    let script = "env > env.out; for f in \"$TLS_KEY\" \"$BIG\" \"$PGPASSFILE\" \"$(dirname \"$PGPASSFILE\")/conf/key.pem\"; do stat -c '%a %n' \"$f\" >> modes.out; done; stat -c '%a' \"$(dirname \"$TLS_KEY\")\" > dir.out; cat \"$PGPASSFILE\" > pgpass.out";
    run_with_xdg(&p, &["--", "sh", "-c", script]).code(0);
    let env = std::fs::read_to_string(p.path("env.out")).unwrap();
    assert!(
        env.contains("DATABASE_URL=postgres://app:p%40ss%2Fw%3Ard%25@db:5432/app"),
        "{env}"
    );
    let private = p.path("xdg/secret-run");
    let key_path = env
        .lines()
        .find_map(|l| l.strip_prefix("TLS_KEY="))
        .unwrap()
        .to_owned();
    assert!(
        key_path.starts_with(private.to_str().unwrap()),
        "{key_path}"
    );
    assert!(
        env.contains(&format!("KEY_NOTE=key in {key_path}")),
        "{env}"
    );
    assert!(
        !env.contains("CANARY-file-b41e20"),
        "a file's value is in the environment"
    );
    let modes = std::fs::read_to_string(p.path("modes.out")).unwrap();
    let modes: Vec<&str> = modes
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(modes, ["400", "440", "600", "400"]);
    assert_eq!(
        std::fs::read_to_string(p.path("dir.out")).unwrap().trim(),
        "700"
    );
    assert_eq!(
        std::fs::read_to_string(p.path("pgpass.out")).unwrap(),
        "db:5432:app:app:p@ss/w:rd%\n"
    );
    // Gone with secret-run.
    assert!(!Path::new(&key_path).exists());
    assert_eq!(std::fs::read_dir(&private).unwrap().count(), 0);
    // check renders everything, writes nothing, shows no value.
    let (k, v) = xdg(&p);
    let check = p.run_env(&["check"], &[(&k, &v)]);
    check
        .code(0)
        .stdout_has("DATABASE_URL")
        .stdout_has("pgpass  ok (");
    assert!(!check.stdout.contains("CANARY"), "{}", check.stdout);
    assert_eq!(std::fs::read_dir(&private).unwrap().count(), 0);
    let json = p.run_env(&["check", "--json"], &[(&k, &v)]);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    // TLS_KEY's file first: the 18 bytes of its value.
    assert_eq!(doc["files"][0]["bytes"], 18, "{doc}");
    assert_eq!(doc["files"][1]["bytes"], 200_000, "{doc}");
}

#[test]
fn exits_of_every_kind_remove_the_files_and_exec_keeps_them() {
    let p = Project::with_manifest(
        "[secrets]\nKEY = { path = \"key\", as_file = true }\n[files.\"/PLACEHOLDER/abs.conf\"]\nsource = \"KEY\"\n",
    );
    let abs = p.path("abs.conf");
    let text = std::fs::read_to_string(p.path("secrets.toml"))
        .unwrap()
        .replace("/PLACEHOLDER/abs.conf", abs.to_str().unwrap());
    p.write("secrets.toml", &text);
    p.write(".env", "KEY=k1\n");
    let (k, v) = xdg(&p);
    let private = p.path("xdg/secret-run");
    let empty = |what: &str| {
        let left: Vec<PathBuf> = std::fs::read_dir(&private)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{what}: left {left:?}");
        assert!(!abs.exists(), "{what}: the absolute file is left");
    };
    // The child's own exit, and a non-zero one.
    p.run_env(&["--", "sh", "-c", "test -s \"$KEY\""], &[(&k, &v)])
        .code(0);
    empty("exit 0");
    p.run_env(&["--", "sh", "-c", "exit 3"], &[(&k, &v)])
        .code(3);
    empty("exit 3");
    // A forwarded SIGTERM.
    let run = Supervised::start_env(&p, &["--", "sleep", "30"], &[(&k, &v)]);
    wait_until("the files", Duration::from_secs(10), || abs.exists());
    run.stop_expecting(143);
    empty("SIGTERM");
    // SIGKILL leaves them; the next start of the same manifest removes them.
    let run = Supervised::start_env(&p, &["--", "sleep", "30"], &[(&k, &v)]);
    wait_until("the files", Duration::from_secs(10), || abs.exists());
    run.signal(Signal::SIGKILL);
    let _ = run.wait(Duration::from_secs(10));
    assert_eq!(
        std::fs::read_dir(&private).unwrap().count(),
        1,
        "nothing left by SIGKILL?"
    );
    p.run_env(&["--", "true"], &[(&k, &v)]).code(0);
    assert_eq!(std::fs::read_dir(&private).unwrap().count(), 0);
    // --exec: the command outlives secret-run, and so do its files.
    p.run_env(
        &["--exec", "--", "sh", "-c", "echo \"$KEY\" > key-path"],
        &[(&k, &v)],
    )
    .code(0);
    let kept = std::fs::read_to_string(p.path("key-path")).unwrap();
    assert_eq!(std::fs::read_to_string(kept.trim()).unwrap(), "k1");
    assert!(abs.exists());
}

#[test]
fn a_rotation_rewrites_files_whole_and_only_when_they_changed() {
    // A child that ignores SIGHUP (on_change = "signal") while a reader reads the file without
    // pause: every read is one version or the other, never a mix or a half.
    let p = Project::with_manifest(
        "[backends.files]\nkind = \"file\"\ndir = \"run\"\n[secrets]\nBLOB = { backend = \"files\", path = \"blob\", as_file = true }\nOTHER = { backend = \"files\", path = \"other\", as_file = true }\n[run]\non_change = \"signal\"\nchild_signal = \"SIGUSR1\"\nmin_restart_interval = \"10ms\"\n",
    );
    let a = "a".repeat(300_000);
    let b = "b".repeat(100_000);
    p.write("run/blob", &a);
    p.write("run/other", "same");
    crate::support::script(
        &p,
        "child",
        "trap '' USR1\necho \"$BLOB\" > blob-path\necho \"$OTHER\" > other-path\nwhile :; do sleep 1; done",
    );
    let (k, v) = xdg(&p);
    let run = Supervised::start_env(&p, &["--", "./child"], &[(&k, &v)]);
    wait_until("the child", Duration::from_secs(10), || {
        p.path("other-path").exists()
    });
    let blob = PathBuf::from(std::fs::read_to_string(p.path("blob-path")).unwrap().trim());
    let other = PathBuf::from(
        std::fs::read_to_string(p.path("other-path"))
            .unwrap()
            .trim(),
    );
    let other_mtime = std::fs::metadata(&other).unwrap().modified().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (blob, stop, a, b) = (blob.clone(), stop.clone(), a.clone(), b.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = std::fs::read_to_string(&blob).unwrap();
                assert!(
                    text == a || text == b,
                    "a torn read of {} bytes",
                    text.len()
                );
                reads += 1;
            }
            reads
        })
    };
    for n in 0..20 {
        let next = if n % 2 == 0 { &b } else { &a };
        p.write("run/blob.tmp", next);
        std::fs::rename(p.path("run/blob.tmp"), p.path("run/blob")).unwrap();
        run.signal(Signal::SIGHUP);
        let want = next.clone();
        wait_until("the rewrite", Duration::from_secs(10), || {
            std::fs::read_to_string(&blob).is_ok_and(|t| t == want)
        });
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 20);
    assert_eq!(
        std::fs::metadata(&other).unwrap().modified().unwrap(),
        other_mtime,
        "an unchanged file was rewritten"
    );
    run.stop_expecting(143);
}

#[test]
fn bad_files_and_templates_are_refused_and_nothing_is_written() {
    let p = Project::new();
    p.write(".env", "A=CANARY-dotenv-7f3a9c\n");
    let (k, v) = xdg(&p);
    let refused = |manifest: &str, code: i32, said: &str| {
        p.write("secrets.toml", manifest);
        let r = p.run_env(&["--", "sh", "-c", "touch started"], &[(&k, &v)]);
        r.code(code).stderr_has(said);
        assert!(!r.stderr.contains("CANARY"), "{}", r.stderr);
        assert!(!p.path("started").exists(), "the command ran");
        let left = std::fs::read_dir(p.path("xdg")).unwrap().count();
        assert!(left <= 1, "files were written");
    };
    refused(
        "[secrets]\nA = \"a\"\nB = { template = \"{{ A \" }\n",
        78,
        "secrets.toml:3:1: secret `B`: the template",
    );
    refused(
        "[secrets]\nA = \"a\"\nB = { template = \"{{ NOPE }}\" }\n",
        78,
        "the template names `NOPE`, which the manifest does not declare",
    );
    refused(
        "[secrets]\nA = \"a\"\nB = { template = \"{{ C }}\" }\nC = { template = \"{{ B }}\" }\n",
        78,
        "(a cycle)",
    );
    refused(
        "[secrets]\nA = \"a\"\nB = { template = \"{{ A }}\", as_file = true }\n",
        78,
        "`as_file` has no meaning with it",
    );
    refused(
        "[secrets]\nA = \"a\"\n[files.\"../out\"]\nsource = \"A\"\n",
        78,
        "cannot leave it with `..`",
    );
    refused(
        "[secrets]\nA = \"a\"\n[files.\"x\"]\nsource = \"A\"\n[files.\"./x\"]\nsource = \"A\"\n",
        78,
        "writes the same path",
    );
    p.write("t.tmpl", "line one\n{{ A }} {{ MISSING }}\n");
    refused(
        "[secrets]\nA = \"a\"\n[files.\"x\"]\ntemplate = \"t.tmpl\"\n",
        78,
        "names `MISSING`, which the manifest does not declare",
    );
    p.write("t.tmpl", "line one\n{% if %}\n");
    refused(
        "[secrets]\nA = \"a\"\n[files.\"x\"]\ntemplate = \"t.tmpl\"\n",
        78,
        "t.tmpl:2:",
    );
    let missing = p.path("no/such/dir/x.conf");
    refused(
        &format!(
            "[secrets]\nA = \"a\"\n[files.\"{}\"]\nsource = \"A\"\n",
            missing.display()
        ),
        73,
        "does not exist",
    );
    // An unwritable directory: as nobody when the tests run as root, who writes anywhere.
    let ro = p.path("ro");
    std::fs::create_dir_all(&ro).unwrap();
    crate::support::set_mode(&ro, 0o555);
    p.write(
        "secrets.toml",
        &format!(
            "[secrets]\nA = \"a\"\n[files.\"{}/x\"]\nsource = \"A\"\n",
            ro.display()
        ),
    );
    let mut cmd = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(crate::support::bin());
        c
    } else {
        Command::new(crate::support::bin())
    };
    cmd.current_dir(p.dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["--", "sh", "-c", "touch started"]);
    let r = crate::support::Run::from(cmd.output().unwrap());
    r.code(73).stderr_has("is not writable");
    assert!(!ro.join("x").exists() && !p.path("started").exists());
}

#[cfg(feature = "vault")]
/// Two self-signed certificates, as PEM files `c1.pem`/`k1.pem` and `c2.pem`/`k2.pem`.
fn certificates(p: &Project) {
    for n in ["1", "2"] {
        let out = Command::new("openssl")
            .current_dir(p.dir.path())
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-keyout",
                &format!("k{n}.pem"),
                "-out",
                &format!("c{n}.pem"),
                "-subj",
                &format!("/CN=rotation-{n}"),
            ])
            .output()
            .expect("openssl (scripts/install-test-servers installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[cfg(feature = "vault")]
/// The certificate subject a TLS client sees on `port`, if the handshake succeeds.
fn served_subject(port: u16) -> Option<String> {
    crate::support::served_certificate(port, "-subject").filter(|s| s.contains("rotation-"))
}

#[cfg(feature = "vault")]
#[test]
fn nginx_serves_tls_from_files_and_a_rotation_reaches_it_without_a_failed_request() {
    let bao = crate::openbao::shared();
    let p = Project::new();
    certificates(&p);
    let put = |n: &str| {
        bao.ok(&[
            "kv",
            "put",
            "secret/files-test/web/tls",
            &format!("cert=@{}", p.path(&format!("c{n}.pem")).display()),
            &format!("key=@{}", p.path(&format!("k{n}.pem")).display()),
        ]);
    };
    put("1");
    // The example as shipped, pointed at this OpenBao and a free port.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nginx-tls");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let manifest = std::fs::read_to_string(example.join("secrets.toml"))
        .unwrap()
        .replace("path = \"web/tls\"", "path = \"files-test/web/tls\"");
    p.write("secrets.toml", &manifest);
    p.write(
        "nginx.conf.tmpl",
        &std::fs::read_to_string(example.join("nginx.conf.tmpl"))
            .unwrap()
            .replace("127.0.0.1:8443", &format!("127.0.0.1:{port}")),
    );
    let (k, v) = xdg(&p);
    let nginx = if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    };
    let run = Supervised::start_env(
        &p,
        &[
            "--",
            "sh",
            "-c",
            &format!("exec {nginx} -p \"$PWD/\" -e stderr -c \"$NGINX_CONF\""),
        ],
        &[
            (&k, &v),
            ("VAULT_ADDR", &bao.addr),
            ("VAULT_TOKEN", crate::openbao::ROOT_TOKEN),
        ],
    );
    assert!(
        crate::support::poll_until(Duration::from_secs(15), || served_subject(port)
            .is_some_and(|s| s.contains("rotation-1"))),
        "nginx did not serve the first certificate"
    );
    // A client during the rotation: every handshake must succeed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match served_subject(port) {
                    Some(_) => ok += 1,
                    None => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    put("2");
    run.signal(Signal::SIGHUP);
    assert!(
        crate::support::poll_until(Duration::from_secs(15), || served_subject(port)
            .is_some_and(|s| s.contains("rotation-2"))),
        "nginx did not serve the rotated certificate"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = client.join().unwrap();
    assert_eq!(
        failed, 0,
        "failed handshakes during the rotation ({ok} succeeded)"
    );
    assert!(ok > 3, "{ok}");
    let audit_free = run.stop_expecting(0);
    assert!(!audit_free.contains("PRIVATE KEY"), "{audit_free}");
}

#[test]
fn psql_logs_into_postgresql_with_a_rendered_pgpassfile() {
    let p = Project::new();
    let password = "p@ss:w0rd/with\\specials";
    let pg = postgres(&p, password);
    p.write(
        "secrets.toml",
        &format!(
            "[secrets]\nPG_PASSWORD = \"pg/password\"\n[files.\"pgpass\"]\ntemplate = \"pgpass.tmpl\"\nenv = \"PGPASSFILE\"\n\n# {port}\n",
            port = pg.port
        ),
    );
    // .pgpass escapes `:` and `\\` in fields.
    p.write(".env", "PG_PASSWORD='p@ss:w0rd/with\\specials'\n");
    p.write(
        "pgpass.tmpl",
        &r"127.0.0.1:PORT:postgres:app:{{ PG_PASSWORD | replace('\\', '\\\\') | replace(':', '\\:') }}
"
        .replace("PORT", &pg.port.to_string()),
    );
    let (k, v) = xdg(&p);
    let r = p.run_env(
        &[
            "--",
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "app",
            "-d",
            "postgres",
            "-w",
            "-tAc",
            "select 6 * 7",
        ],
        &[(&k, &v)],
    );
    r.code(0).stdout_has("42");
}

#[test]
fn a_file_for_another_user_is_theirs_to_read_and_nobody_elses() {
    if !nix::unistd::geteuid().is_root() {
        // `owner` is for secret-run running as root; as anyone else it is refused (below).
        let p = Project::with_manifest(
            "[secrets]\nKEY = { path = \"key\", as_file = true, owner = \"nobody\" }\n",
        );
        p.write(".env", "KEY=k\n");
        run_with_xdg(&p, &["--", "true"])
            .code(78)
            .stderr_has("needs secret-run to run as root");
        return;
    }
    let p = Project::with_manifest(
        "[secrets]\nKEY = { path = \"key\", as_file = true, owner = \"nobody\" }\nOTHER = { path = \"other\", as_file = true }\n",
    );
    p.write(".env", "KEY=for-nobody\nOTHER=for-root\n");
    let as_nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups";
    let script = format!(
        "{as_nobody} cat \"$KEY\" > nobody.out; {as_nobody} cat \"$OTHER\" > other.out 2>&1; {as_nobody} ls \"$(dirname \"$KEY\")\" > list.out 2>&1; true"
    );
    run_with_xdg(&p, &["--", "sh", "-c", &script]).code(0);
    assert_eq!(
        std::fs::read_to_string(p.path("nobody.out")).unwrap(),
        "for-nobody"
    );
    let other = std::fs::read_to_string(p.path("other.out")).unwrap();
    assert!(other.contains("Permission denied"), "{other}");
    let list = std::fs::read_to_string(p.path("list.out")).unwrap();
    assert!(
        list.contains("Permission denied"),
        "the directory can be listed: {list}"
    );
}
