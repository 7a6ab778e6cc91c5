//! What a hostile environment and bad input must not do: one test per class of attack (issue 8),
//! each with real files, FIFOs, processes, terminals and signals.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{Project, child_env, run_within, script, wait_until};

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

fn threads_of(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_provider_printing_its_value_on_stderr_stays_out_of_the_audit_log() {
    let p = Project::with_manifest(
        "[backends.p]\nkind = \"command\"\nargv = [\"./provider\"]\n[secrets]\nA = { backend = \"p\", path = \"a\" }\n[audit]\npath = \"audit.jsonl\"\n",
    );
    script(
        &p,
        "provider",
        "echo 'CANARY-cmd-5c77e1 rejected' >&2; exit 3",
    );
    for args in [&["--", "true"][..], &["--exec", "--", "true"]] {
        let r = p.run(args);
        r.code(69);
        // On the terminal, as documented: the operator needs the provider's words.
        r.stderr_has("CANARY-cmd-5c77e1");
    }
    let log = std::fs::read_to_string(p.path("audit.jsonl")).unwrap();
    assert!(!log.contains("CANARY"), "{log}");
    assert!(log.contains("\"start-failed\""), "{log}");
    assert!(log.contains("\"outcome\":\"unavailable\""), "{log}");
}

#[test]
fn secret_run_is_not_dumpable_but_its_command_is() {
    // Another process of the same user (uid 65534 here) must not read secret-run's memory;
    // the command itself keeps its ordinary core limit and dumpability.
    let p = Project::with_manifest("[secrets]\nA = \"a\"\n");
    p.write(".env", "A=CANARY-dotenv-7f3a9c\n");
    script(&p, "svc", "sleep 30");
    for path in [p.dir.path(), &p.path(".env"), &p.path("secrets.toml")] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let as_nobody =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    let mut cmd = if as_nobody {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        c.arg(crate::support::bin());
        c
    } else {
        std::process::Command::new(crate::support::bin())
    };
    cmd.current_dir(p.dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["--", "./svc"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if as_nobody {
        // The test's own binary may sit in a directory nobody cannot enter.
        assert!(
            Path::new(crate::support::bin()).metadata().is_ok(),
            "binary missing"
        );
    }
    let mut sup = cmd.spawn().unwrap();
    let sup_pid = sup.id();
    let child_pid = {
        let mut found = None;
        wait_until("the command", Duration::from_secs(10), || {
            found = std::fs::read_to_string(format!("/proc/{sup_pid}/task/{sup_pid}/children"))
                .ok()
                .and_then(|c| c.split_whitespace().next().map(str::to_owned));
            found.is_some()
        });
        found.unwrap()
    };
    let limits = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/limits"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap()
            .split_whitespace()
            .nth(4)
            .unwrap()
            .to_owned()
    };
    let own_limit = limits("self");
    assert_eq!(
        limits(&sup_pid.to_string()),
        "0",
        "secret-run may write a core file"
    );
    assert_eq!(
        limits(&child_pid),
        own_limit,
        "the command lost its core limit"
    );
    // Non-dumpable: its /proc files belong to root, whoever runs it.
    use std::os::unix::fs::MetadataExt;
    let owner = |pid: &str| std::fs::metadata(format!("/proc/{pid}/mem")).unwrap().uid();
    assert_eq!(owner(&sup_pid.to_string()), 0, "secret-run is dumpable");
    if as_nobody {
        assert_eq!(
            owner(&child_pid),
            65534,
            "the command was made non-dumpable"
        );
        // And the same user cannot read it.
        let reader = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                "cat",
            ])
            .arg(format!("/proc/{sup_pid}/environ"))
            .output()
            .unwrap();
        assert!(
            !reader.status.success(),
            "another process of the user read secret-run's /proc"
        );
    }
    kill(Pid::from_raw(sup_pid as i32), Signal::SIGTERM).unwrap();
    let _ = sup.wait();
}

#[test]
fn a_symlink_or_fifo_swapped_into_the_file_backend_is_refused_by_what_was_opened() {
    let p = Project::with_manifest(
        "[backends.m]\nkind = \"file\"\ndir = \"secrets\"\n[secrets]\nA = { backend = \"m\", path = \"a\" }\n",
    );
    p.write("outside", "CANARY-file-b41e20");
    p.write("secrets/a", "inside");
    // A symlink out (absolute or relative), and a FIFO: refused, no hang, nothing read.
    std::fs::remove_file(p.path("secrets/a")).unwrap();
    std::os::unix::fs::symlink(p.path("outside"), p.path("secrets/a")).unwrap();
    p.run(&["--exec", "--", "true"])
        .code(77)
        .stderr_has("resolves outside")
        .no_canary(true);
    std::fs::remove_file(p.path("secrets/a")).unwrap();
    std::os::unix::fs::symlink("../outside", p.path("secrets/a")).unwrap();
    p.run(&["check"]).code(77).no_canary(true);
    std::fs::remove_file(p.path("secrets/a")).unwrap();
    mkfifo(&p.path("secrets/a"));
    let mut cmd = p.cmd();
    cmd.args(["--timeout", "2s", "--exec", "--", "true"]);
    run_within(cmd, Duration::from_secs(10))
        .code(65)
        .stderr_has("is a FIFO, not a regular file");
    // Kubernetes' layout (relative `..data` symlinks) is still followed.
    std::fs::remove_file(p.path("secrets/a")).unwrap();
    p.write("secrets/..2026_11_29/a", "from-k8s");
    std::os::unix::fs::symlink("..2026_11_29", p.path("secrets/..data")).unwrap();
    std::os::unix::fs::symlink("..data/a", p.path("secrets/a")).unwrap();
    assert_eq!(child_env(&p, &[], &[])["A"], "from-k8s");
    // Swapped back and forth while secret-run reads: never the outside file.
    let swapper = {
        let dir = p.path("secrets");
        let outside = p.path("outside");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = std::sync::Arc::clone(&stop);
        let h = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let tmp = dir.join("tmp");
                let _ = std::fs::remove_file(&tmp);
                let _ = std::os::unix::fs::symlink(&outside, &tmp);
                let _ = std::fs::rename(&tmp, dir.join("a"));
                let _ = std::fs::remove_file(&tmp);
                let _ = std::os::unix::fs::symlink("..data/a", &tmp);
                let _ = std::fs::rename(&tmp, dir.join("a"));
            }
        });
        (stop, h)
    };
    for _ in 0..300 {
        let r = p.run(&["--exec", "--", "sh", "-c", "printf %s \"$A\""]);
        assert!(
            !r.stdout.contains("CANARY"),
            "read through a swapped symlink"
        );
    }
    swapper.0.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.1.join().unwrap();
}

#[test]
fn the_deadline_holds_for_every_read_in_every_mode() {
    // A manifest that is a FIFO with no writer, and a .env that is one: --timeout ends both.
    let p = Project::new();
    mkfifo(&p.path("secrets.toml"));
    for args in [&["--exec", "--", "true"][..], &["check"], &["--", "true"]] {
        let mut cmd = p.cmd();
        cmd.args(["--timeout", "500ms"]).args(args);
        run_within(cmd, Duration::from_secs(10))
            .code(78)
            .stderr_has("within the deadline (--timeout)");
    }
    let p = Project::with_manifest("[secrets]\nA = \"a\"\n");
    mkfifo(&p.path(".env"));
    for args in [&["--exec", "--", "true"][..], &["check"], &["--", "true"]] {
        let mut cmd = p.cmd();
        cmd.args(["--timeout", "500ms"]).args(args);
        run_within(cmd, Duration::from_secs(10)).code(69);
    }
    // A .env that never ends (/dev/zero), a sparse 2 GB one: the size limit, at once.
    std::fs::remove_file(p.path(".env")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", p.path(".env")).unwrap();
    let mut cmd = p.cmd();
    cmd.args(["--exec", "--", "true"]);
    run_within(cmd, Duration::from_secs(10))
        .code(65)
        .stderr_has("larger than 4194304 bytes");
    std::fs::remove_file(p.path(".env")).unwrap();
    let f = std::fs::File::create(p.path(".env")).unwrap();
    f.set_len(2 << 30).unwrap();
    p.run(&["--exec", "--", "true"])
        .code(65)
        .stderr_has("larger than");
    // A writer that shows up in time is read (1Password serves .env through a FIFO).
    std::fs::remove_file(p.path(".env")).unwrap();
    mkfifo(&p.path(".env"));
    let fifo = p.path(".env");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(fifo, "A=from-fifo\n").unwrap();
    });
    assert_eq!(child_env(&p, &[], &[])["A"], "from-fifo");
    writer.join().unwrap();
}

#[test]
fn watching_a_fifo_env_leaves_no_thread_behind() {
    let p = Project::with_manifest(
        "[secrets]\nA = \"a\"\n[run]\nwatch = \"100ms\"\nmin_restart_interval = \"100ms\"\n",
    );
    mkfifo(&p.path(".env"));
    let fifo = p.path(".env");
    // One writer for the first resolve, then none: each reload meets a FIFO without a writer.
    let writer = std::thread::spawn(move || std::fs::write(fifo, "A=1\n").unwrap());
    script(&p, "svc", "sleep 60");
    let mut sup = p
        .cmd()
        .args(["--timeout", "300ms", "--", "./svc"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    writer.join().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let early = threads_of(sup.id());
    std::thread::sleep(Duration::from_secs(4));
    let late = threads_of(sup.id());
    assert!(late <= early + 1, "threads grew from {early} to {late}");
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    let _ = sup.wait();
}

#[test]
fn every_read_of_untrusted_size_is_bounded() {
    let p = Project::with_manifest(
        "[backends.p]\nkind = \"command\"\nargv = [\"./provider\"]\n[secrets]\nA = { backend = \"p\", path = \"a\" }\n",
    );
    // 1 GiB on stdout: stopped at 1 MiB, the program killed.
    script(&p, "provider", "head -c 1073741824 /dev/zero");
    let mut cmd = p.cmd();
    cmd.args(["--exec", "--", "true"]);
    run_within(cmd, Duration::from_secs(20))
        .code(65)
        .stderr_has("printed more than 1048576 bytes on stdout");
    // 512 MB on stderr, then a value: the value is used, the stderr mostly dropped.
    script(
        &p,
        "provider",
        "head -c 536870912 /dev/zero | tr '\\0' x >&2; echo ok",
    );
    let mut cmd = p.cmd();
    cmd.args(["--exec", "--", "sh", "-c", "printf %s \"$A\""]);
    let r = run_within(cmd, Duration::from_secs(60));
    r.code(0);
    assert_eq!(r.stdout, "ok");
    // A manifest of 5 MB: refused by size, not parsed.
    let big = Project::new();
    big.write("secrets.toml", &format!("# {}\n", "x".repeat(5 << 20)));
    big.run(&["check"]).code(78).stderr_has("larger than");
}

#[test]
fn a_signal_during_the_first_resolve_kills_the_providers_and_is_recorded() {
    let p = Project::with_manifest(
        "[backends.p]\nkind = \"command\"\nargv = [\"./provider\"]\n[secrets]\nA = { backend = \"p\", path = \"a\" }\n[audit]\npath = \"audit.jsonl\"\n",
    );
    // The provider starts a grandchild and waits: both must die with the resolve.
    script(
        &p,
        "provider",
        "sleep 300 & echo $! > grandchild.pid; echo $$ > provider.pid; wait",
    );
    for args in [&["--exec", "--", "true"][..], &["--", "true"], &["check"]] {
        for f in ["grandchild.pid", "provider.pid", "audit.jsonl"] {
            let _ = std::fs::remove_file(p.path(f));
        }
        let mut sup = p.cmd().args(args).stderr(Stdio::piped()).spawn().unwrap();
        wait_until("the provider", Duration::from_secs(10), || {
            p.path("provider.pid").exists() && p.path("grandchild.pid").exists()
        });
        std::thread::sleep(Duration::from_millis(100));
        kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
        let status = sup.wait().unwrap();
        assert_eq!(status.code(), Some(143), "{args:?}");
        for f in ["provider.pid", "grandchild.pid"] {
            let pid: i32 = std::fs::read_to_string(p.path(f))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            crate::support::assert_gone(pid);
        }
        if args != ["check"] {
            let log = std::fs::read_to_string(p.path("audit.jsonl")).unwrap();
            assert!(
                log.contains("\"start-failed\"") && log.contains("SIGTERM"),
                "{log}"
            );
        }
    }
}

#[test]
fn the_audit_log_is_never_a_symlink_a_fifo_or_readable_by_others() {
    let p = Project::with_manifest("[secrets]\nA = \"a\"\n[audit]\npath = \"audit.jsonl\"\n");
    p.write(".env", "A=1\n");
    p.write("target", "");
    std::os::unix::fs::symlink(p.path("target"), p.path("audit.jsonl")).unwrap();
    p.run(&["--", "true"])
        .code(73)
        .stderr_has("it is a symlink");
    assert_eq!(std::fs::read_to_string(p.path("target")).unwrap(), "");
    std::fs::remove_file(p.path("audit.jsonl")).unwrap();
    mkfifo(&p.path("audit.jsonl"));
    let mut cmd = p.cmd();
    cmd.args(["--", "true"]);
    run_within(cmd, Duration::from_secs(10)).code(73);
    std::fs::remove_file(p.path("audit.jsonl")).unwrap();
    p.write("audit.jsonl", "");
    std::fs::set_permissions(
        p.path("audit.jsonl"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    p.run(&["--", "true"]).code(0);
    let mode = std::fs::metadata(p.path("audit.jsonl"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn process_group_under_a_terminal_lets_the_child_read_it() {
    // On a real pseudo-terminal: the child reads a line from the terminal and exits.
    let p = Project::with_manifest("[secrets]\n");
    script(&p, "reader", "read line; echo \"got:$line\"");
    let py = format!(
        r#"import os, pty, sys, time, select
pid, fd = pty.fork()
if pid == 0:
    os.execv({bin:?}, [{bin:?}, "--process-group", "--", "./reader"])
time.sleep(1.0)
os.write(fd, b"hello\n")
out = b""
end = time.time() + 10
while time.time() < end:
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
else:
    os.kill(pid, 9)
    print("HUNG", out)
    sys.exit(1)
print(out.decode(errors="replace"))
print("EXIT", os.waitstatus_to_exitcode(status))
"#,
        bin = crate::support::bin()
    );
    let out = std::process::Command::new("python3")
        .current_dir(p.dir.path())
        .args(["-c", &py])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("got:hello"), "{text}");
    assert!(text.contains("EXIT 0"), "{text}");
}

#[test]
fn huge_durations_are_refused_when_read() {
    let p = Project::with_manifest("[secrets]\n[run]\nwatch = \"500000000000y\"\n");
    p.run(&["check"])
        .code(78)
        .stderr_has("longer than the longest duration");
    let p = Project::with_manifest("[secrets]\n");
    p.run(&["--timeout", "500000000000y", "check"]).code(64);
    p.run(&["--timeout", "3651d", "check"])
        .code(64)
        .stderr_has("longest duration");
}

#[test]
fn defaults_get_the_checks_values_get() {
    let p = Project::with_manifest("[secrets]\nA = { path = \"a\", default = \"x\\u0000y\" }\n");
    p.write(".env", "");
    p.run(&["check"])
        .code(78)
        .stderr_has("`default`")
        .stderr_has("NUL byte");
    let big = "x".repeat(200_000);
    let p = Project::with_manifest(&format!(
        "[secrets]\nA = {{ path = \"a\", default = \"{big}\" }}\n"
    ));
    p.run(&["--exec", "--", "true"])
        .code(78)
        .stderr_has("Linux limits one environment string");
}

#[test]
fn init_from_dotenv_reads_back_every_key_as_written() {
    let p = Project::new();
    p.write(
        "dev.env",
        "DB_PASSWORD=upper\ndb_password=lower\nApi_Key=mixed\nhttp_proxy=proxy\nPLAIN=$$literal\n",
    );
    p.run(&["init", "--from-dotenv", "dev.env"]).code(0);
    let env = child_env(&p, &[], &[]);
    assert_eq!(env["DB_PASSWORD"], "upper");
    assert_eq!(env["db_password"], "lower");
    assert_eq!(env["Api_Key"], "mixed");
    assert_eq!(env["http_proxy"], "proxy");
    assert_eq!(env["PLAIN"], "$literal");
    // A dangling symlink where the manifest goes: refused without --force, replaced (not
    // written through) with it.
    let q = Project::new();
    q.write(".env", "A=1\n");
    std::os::unix::fs::symlink(q.path("elsewhere.toml"), q.path("secrets.toml")).unwrap();
    q.run(&["init", "--from-dotenv", ".env"])
        .code(73)
        .stderr_has("already exists");
    assert!(!q.path("elsewhere.toml").exists());
    q.run(&["init", "--from-dotenv", ".env", "--force"]).code(0);
    assert!(
        !q.path("elsewhere.toml").exists(),
        "written through the symlink"
    );
    assert!(
        !q.path("secrets.toml")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn dollar_signs_in_env_values_never_change_silently() {
    let p = Project::with_manifest("[secrets]\nPASSWORD = \"password\"\nOTHER = \"other\"\n");
    p.write(".env", "PASSWORD=\"ab$2xcd\"\nOTHER='${X:-y}'\n");
    let env = child_env(&p, &[], &[]);
    assert_eq!(env["PASSWORD"], "ab$2xcd");
    assert_eq!(env["OTHER"], "${X:-y}");
    // An undefined name is an error naming it and the line, never an empty string.
    p.write(".env", "OTHER=1\nPASSWORD=\"pa$NOT_DEFINED_ANYWHERE\"\n");
    p.run(&["--exec", "--", "true"])
        .code(65)
        .stderr_has("line 2")
        .stderr_has("$NOT_DEFINED_ANYWHERE");
    // The file wins over the process environment inside ${…}.
    p.write(".env", "X=from-file\nOTHER=1\nPASSWORD=\"${X}\"\n");
    let env = child_env(&p, &[], &[("X", "from-env")]);
    assert_eq!(env["PASSWORD"], "from-file");
    // A BOM from a Windows editor.
    p.write_bytes(".env", b"\xef\xbb\xbfPASSWORD=bom\nOTHER=1\n");
    assert_eq!(child_env(&p, &[], &[])["PASSWORD"], "bom");
}

#[test]
fn the_dotenv_corpus_agrees_with_python_dotenv_where_it_says_so() {
    let corpus: serde_json::Value =
        serde_json::from_str(include_str!("../corpus/dotenv.json")).unwrap();
    let py = crate::kept::venv_bin("python");
    let script = r#"
import io, json, sys
from dotenv import dotenv_values
cases = json.load(sys.stdin)
out = {}
for c in cases:
    out[c["name"]] = dict(dotenv_values(stream=io.StringIO(c["text"]), interpolate=True))
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(py)
        .args(["-c", script])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(corpus.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let python: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut agreed = 0;
    for case in corpus.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let Some(expect) = case.get("expect") else {
            continue;
        };
        let agrees = case["python_dotenv"] == "agrees";
        assert_eq!(
            &python[name] == expect,
            agrees,
            "case {name}: python-dotenv gives {}, the corpus expects {expect} and says: {}",
            python[name],
            case["python_dotenv"]
        );
        agreed += usize::from(agrees);
    }
    assert!(agreed >= 15, "only {agreed} cases agree");
    // And the binary reads the corpus as its parser does (one case end to end).
    let p = Project::with_manifest("[secrets]\nA = \"a\"\n");
    p.write(".env", "A=\"a\\tb\\nc \\\"q\\\" d\\\\e\"\n");
    assert_eq!(child_env(&p, &[], &[])["A"], "a\tb\nc \"q\" d\\e");
}

#[test]
fn a_full_or_closed_stdout_is_an_io_error_never_a_panic() {
    let p = Project::with_manifest("[secrets]\n");
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    for args in [
        &["check"][..],
        &["check", "--json"],
        &["completions", "bash"],
        &["man"],
        &["--help"],
        &["--version"],
    ] {
        let out = p.cmd().args(args).stdout(full()).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(74),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
    // A closed stderr does not turn an error into a panic either.
    let out = p
        .cmd()
        .args(["--", "no-such-command-x"])
        .stderr(full())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
}

#[test]
fn control_characters_are_escaped_in_every_message() {
    // ESC in a path, a backend name, and a provider's stderr.
    let p = Project::with_manifest(
        "[backends.p]\nkind = \"command\"\nargv = [\"./provider\"]\n[secrets]\nA = { backend = \"p\", path = \"a\\u001b[31m\" }\nB = { path = \"b\\u0007\" }\n",
    );
    p.write(".env", "");
    script(&p, "provider", "printf 'bad\\033[2J\\000news' >&2; exit 1");
    let r = p.run_env(&["-vv", "check"], &[]);
    let r2 = p.run_env(
        &["--", "true"],
        &[("SECRET_BACKEND", "nope\u{1b}]0;title\u{7}")],
    );
    let r3 = p.run(&["--", "true"]);
    for run in [&r, &r2, &r3] {
        for out in [&run.stdout, &run.stderr] {
            assert!(!out.contains('\u{1b}'), "raw ESC in:\n{out}");
            assert!(!out.contains('\u{7}'), "raw BEL in:\n{out}");
            assert!(!out.contains('\0'), "raw NUL in:\n{out}");
        }
    }
    r3.stderr_has("\\u{1b}[2J");
    r2.stderr_has("\\u{1b}]0;title");
}
