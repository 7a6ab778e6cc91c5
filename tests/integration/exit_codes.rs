//! One test per row of the exit-code table in docs/lifecycle.md.

use crate::support::{Project, script, set_mode};

fn dotenv_project() -> Project {
    let p = Project::with_manifest("[secrets]\nA = \"a\"\n");
    p.write(".env", "A=1\n");
    p
}

#[test]
fn row_0_success() {
    dotenv_project().run(&["--", "true"]).code(0);
}

#[test]
fn row_child_code_passes_through() {
    let p = dotenv_project();
    p.run(&["--", "sh", "-c", "exit 3"]).code(3);
    p.run(&["--exec", "--", "sh", "-c", "exit 42"]).code(42);
}

#[test]
fn row_128_plus_signal() {
    let p = dotenv_project();
    p.run(&["--", "sh", "-c", "kill -KILL $$"]).code(137);
    p.run(&["--", "sh", "-c", "kill -TERM $$"]).code(143);
}

#[test]
fn row_64_usage() {
    let p = dotenv_project();
    p.run(&["--no-such-flag"]).code(64);
    p.run(&[]).code(64).stderr_has("no command given");
    p.run(&["--"]).code(64);
    p.run(&["--timeout", "soon", "--", "true"])
        .code(64)
        .stderr_has("not a duration");
    p.run(&["--exec", "check"]).code(64);
}

#[test]
fn row_65_secret_missing_or_unusable() {
    let p = dotenv_project();
    p.write("secrets.toml", "[secrets]\nA = \"a\"\nB = \"b\"\n");
    p.run(&["--", "true"])
        .code(65)
        .stderr_has("`B` is not defined in");
}

#[test]
fn row_69_backend_unavailable() {
    let p = Project::new();
    script(&p, "bin/hang", "echo $$ > hang.pid; exec sleep 30");
    p.write("secrets.toml", "[backends.h]\nkind = \"command\"\nargv = [\"./bin/hang\"]\n[secrets]\nA = { backend = \"h\", path = \"a\" }\n");
    p.run(&["--timeout", "200ms", "--", "true"])
        .code(69)
        .stderr_has("backend `h`: did not answer within the 200ms deadline (--timeout)")
        .stderr_has("needed by A");
    let pid = std::fs::read_to_string(p.path("hang.pid")).unwrap();
    crate::support::assert_gone(pid.trim().parse().unwrap());
}

#[test]
fn row_71_the_os_refuses_what_secret_run_needs() {
    use std::os::unix::fs::PermissionsExt;
    // No thread may be created (RLIMIT_NPROC = 1): the reads' thread cannot start. Root is
    // exempt from the limit, so as root the run is made as nobody.
    let p = dotenv_project();
    for path in [p.dir.path(), &p.path(".env"), &p.path("secrets.toml")] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    let mut cmd = std::process::Command::new(if root { "setpriv" } else { "prlimit" });
    if root {
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "prlimit",
        ]);
    }
    cmd.args(["--nproc=1", "--"])
        .arg(crate::support::bin())
        .args(["--exec", "--", "true"])
        .current_dir(p.dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    crate::support::Run::from(cmd.output().unwrap())
        .code(71)
        .stderr_has("cannot start a thread for the reads: Resource temporarily unavailable");
}

#[test]
fn row_73_cannot_write() {
    let p = dotenv_project();
    let before = std::fs::read_to_string(p.path("secrets.toml")).unwrap();
    p.run(&["init"]).code(73).stderr_has("pass --force");
    assert_eq!(
        std::fs::read_to_string(p.path("secrets.toml")).unwrap(),
        before,
        "nothing changed"
    );
    p.run(&["init", "-f", "no/such/dir/secrets.toml"])
        .code(73)
        .stderr_has("cannot write");
}

#[test]
fn row_77_permission_denied() {
    // Root reads any file, so the refusal here is secret-run's own: a symlink leaving the directory.
    let p = Project::with_manifest(
        "[backends.m]\nkind = \"file\"\ndir = \"run\"\n[secrets]\nA = { backend = \"m\", path = \"a\" }\n",
    );
    p.write("elsewhere", "x");
    std::fs::create_dir_all(p.path("run")).unwrap();
    std::os::unix::fs::symlink(p.path("elsewhere"), p.path("run/a")).unwrap();
    p.run(&["--", "true"]).code(77);
}

#[test]
fn row_78_config() {
    let p = dotenv_project();
    p.write(
        "secrets.toml",
        "[secrets]\nA = { path = \"a\", kye = \"x\" }\n",
    );
    p.run(&["--", "true"])
        .code(78)
        .stderr_has("unknown field `kye`");
    Project::new()
        .run(&["--", "true"])
        .code(78)
        .stderr_has("secret-run init");
}

#[test]
fn row_126_not_executable() {
    let p = dotenv_project();
    let path = p.write("tool.sh", "#!/bin/sh\necho hi\n");
    set_mode(&path, 0o644);
    p.run(&["--", "./tool.sh"])
        .code(126)
        .stderr_has("permission denied");
    std::fs::create_dir_all(p.path("subdir")).unwrap();
    p.run(&["--", "./subdir"])
        .code(126)
        .stderr_has("is a directory");
}

#[test]
fn row_127_not_found_before_any_fetch() {
    let p = Project::new();
    script(&p, "bin/provider", "touch provider-was-called; echo v");
    p.write("secrets.toml", "[backends.c]\nkind = \"command\"\nargv = [\"./bin/provider\"]\n[secrets]\nA = { backend = \"c\", path = \"a\" }\n");
    p.run(&["--", "no-such-command-xyz"])
        .code(127)
        .stderr_has("`no-such-command-xyz`");
    p.run(&["--exec", "--", "./missing"]).code(127);
    assert!(
        !p.path("provider-was-called").exists(),
        "a secret was fetched for a command that does not exist"
    );
}
