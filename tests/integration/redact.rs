//! Redaction of the child's output and `secret-run scan` (issue 12), with real pipes, a real
//! pseudo-terminal and a real git repository.

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use nix::sys::signal::Signal;

use crate::support::{Project, Run, wait_until};

const TOKEN: &str = "CANARY-redact-token-4f2a";
const LONGER: &str = "CANARY-redact-token-4f2a-and-longer";
const PASSWORD: &str = "p@ss/w:rd%-CANARY-9c1e";

fn project() -> Project {
    let p = Project::with_manifest(
        "[secrets]\nTOKEN = \"token\"\nLONGER = \"longer\"\nPASSWORD = \"password\"\nPIN = \"pin\"\n",
    );
    p.write(
        ".env",
        &format!("TOKEN={TOKEN}\nLONGER={LONGER}\nPASSWORD='{PASSWORD}'\nPIN=1234\n"),
    );
    p
}

/// Every form of every value that must never get through.
fn forms() -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let mut all = Vec::new();
    for v in [TOKEN, LONGER, PASSWORD] {
        all.push(v.to_owned());
        all.push(STANDARD.encode(v));
        all.push(URL_SAFE_NO_PAD.encode(v));
    }
    all.push("p%40ss%2Fw%3Ard%25-CANARY-9c1e".to_owned());
    all
}

fn assert_clean(run: &Run) {
    for form in forms() {
        assert!(
            !run.stdout.contains(&form),
            "{form:?} in stdout:\n{}",
            run.stdout
        );
        assert!(
            !run.stderr.contains(&form),
            "{form:?} in stderr:\n{}",
            run.stderr
        );
    }
}

/// A Python child: the program is given its secrets in the environment.
fn python(p: &Project, args: &[&str], program: &str) -> Run {
    p.write("child.py", program);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--", "python3", "child.py"]);
    p.run(&all)
}

#[test]
fn every_form_of_every_value_is_replaced_wherever_it_is_cut() {
    let p = project();
    let program = r#"
import base64, json, os, sys, time, urllib.parse
t, l, pw = os.environ["TOKEN"], os.environ["LONGER"], os.environ["PASSWORD"]
def w(s, stream=sys.stdout):
    stream.write(s); stream.flush()
# Cut at every offset, with a pause between the two writes.
for k in range(len(t) + 1):
    w(t[:k]); time.sleep(0.001); w(t[k:] + "\n")
w("plain " + t + "\n")
w("b64 " + base64.b64encode(t.encode()).decode() + "\n")
w("b64url " + base64.urlsafe_b64encode(pw.encode()).decode().rstrip("=") + "\n")
w("url " + urllib.parse.quote(pw, safe="") + "\n")
w("json " + json.dumps({"pw": pw}) + "\n")
w("overlap " + l + "\n")
w("pin 1234\n")
sys.stdout.buffer.write(bytes(range(256)) + t.encode() + bytes(range(256)) + b"\n"); sys.stdout.flush()
w("x" * 10_000_000 + t + "\n")
for i in range(50):
    w(f"out {i} {t}\n")
    w(f"err {i} {t}\n", sys.stderr)
w("eof " + t)
"#;
    let run = python(&p, &["--redact=always"], program);
    run.code(0);
    assert_clean(&run);
    let out = &run.stdout;
    assert_eq!(
        out.matches("[redacted:TOKEN]\n").count(),
        TOKEN.len() + 1 + 3 + 50,
        "every cut, plain, b64, the binary line, the long line, each out line"
    );
    assert!(out.contains("b64url [redacted:PASSWORD]\n"));
    assert!(out.contains("url [redacted:PASSWORD]\n"));
    assert!(out.contains("json {\"pw\": \"[redacted:PASSWORD]\"}\n"));
    assert!(
        out.contains("overlap [redacted:LONGER]\n"),
        "the longer value wins"
    );
    assert!(out.contains("pin 1234\n"), "a short value is left alone");
    assert!(
        out.ends_with("eof [redacted:TOKEN]"),
        "the end without a newline"
    );
    // Each stream in its own order.
    let outs: Vec<&str> = out.lines().filter(|l| l.starts_with("out ")).collect();
    let errs: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("err "))
        .collect();
    for (i, (o, e)) in outs.iter().zip(&errs).enumerate() {
        assert_eq!(*o, format!("out {i} [redacted:TOKEN]"));
        assert_eq!(*e, format!("err {i} [redacted:TOKEN]"));
    }
    assert_eq!((outs.len(), errs.len()), (50, 50));
    run.stderr_has("not redacted, 6 bytes or shorter (redact_min_length): PIN");
}

#[test]
fn without_redaction_the_values_do_get_through() {
    // The control: the same child, no --redact.
    let p = project();
    let run = python(&p, &[], "import os\nprint(os.environ['TOKEN'])\n");
    run.code(0).stdout_has(TOKEN);
}

#[test]
fn exit_codes_signals_and_exec_with_redaction() {
    let p = project();
    let run = python(
        &p,
        &["--redact"],
        "import os, sys\nprint(os.environ['TOKEN'])\nsys.exit(3)\n",
    );
    run.code(3).stdout_has("[redacted:TOKEN]");
    assert_clean(&run);
    // A forwarded SIGTERM; the child's last words still come through, redacted.
    p.write(
        "child.py",
        "import os, signal, sys, time\ndef term(*_):\n    print('bye ' + os.environ['TOKEN'], flush=True)\n    sys.exit(143)\nsignal.signal(signal.SIGTERM, term)\nopen('ready', 'w').close()\nwhile True:\n    time.sleep(1)\n",
    );
    let mut cmd = p.cmd();
    cmd.args(["--redact=always", "--", "python3", "child.py"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    wait_until("the child", Duration::from_secs(10), || {
        p.path("ready").exists()
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let run = Run::from(child.wait_with_output().unwrap());
    run.code(143).stdout_has("bye [redacted:TOKEN]");
    assert_clean(&run);
    p.run(&["--redact", "--exec", "--", "true"])
        .code(64)
        .stderr_has("redaction needs secret-run between the command and its output");
}

#[test]
fn a_terminal_is_left_alone_in_auto_and_redacted_in_always() {
    // On a real pseudo-terminal: the child's stdout is the terminal itself in `auto`.
    let p = project();
    let pty = |mode: &str| {
        let program = r#"import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
out = b""
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
"#;
        p.write("on_terminal.py", program);
        let out = Command::new("python3")
            .current_dir(p.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args([
                "on_terminal.py",
                crate::support::bin(),
                &format!("--redact={mode}"),
                "--",
                "sh",
                "-c",
                "test -t 1 && echo \"tty $TOKEN\" || echo \"pipe $TOKEN\"",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let auto = pty("auto");
    assert!(auto.contains(&format!("tty {TOKEN}")), "{auto}");
    let always = pty("always");
    assert!(always.contains("pipe [redacted:TOKEN]"), "{always}");
    assert!(!always.contains(TOKEN), "{always}");
}

#[test]
fn a_rotated_value_is_redacted_and_the_old_one_still_is() {
    let p = Project::with_manifest(
        "[backends.files]\nkind = \"file\"\ndir = \"run\"\n[secrets]\nTOKEN = { backend = \"files\", path = \"token\" }\n[run]\nmin_restart_interval = \"100ms\"\nredact = \"auto\"\n",
    );
    let (v1, v2) = ("CANARY-rotate-one-11aa", "CANARY-rotate-two-22bb");
    p.write("run/token", v1);
    crate::support::script(
        &p,
        "child",
        &format!(
            "trap 'echo \"bye $TOKEN {v1}\"; exit 0' TERM\necho \"now $TOKEN\"\necho started >> started\nwhile :; do sleep 0.1; done"
        ),
    );
    let mut cmd = p.cmd();
    cmd.args(["--", "./child"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    wait_until("the first child", Duration::from_secs(10), || {
        std::fs::read_to_string(p.path("started")).is_ok_and(|s| s.lines().count() == 1)
    });
    p.write("run/token", v2);
    nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();
    wait_until("the second child", Duration::from_secs(10), || {
        std::fs::read_to_string(p.path("started")).is_ok_and(|s| s.lines().count() == 2)
    });
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    let run = Run::from(child.wait_with_output().unwrap());
    run.code(0);
    assert!(
        !run.stdout.contains(v1) && !run.stdout.contains(v2),
        "{}",
        run.stdout
    );
    // Each child: `now` at start, and `bye` with both values when it is stopped.
    assert_eq!(
        run.stdout.matches("[redacted:TOKEN]").count(),
        6,
        "{}",
        run.stdout
    );
}

#[test]
fn github_actions_gets_masks_before_the_child_runs() {
    let p = project();
    let run = p.run_env(&["--redact", "--", "true"], &[("GITHUB_ACTIONS", "true")]);
    run.code(0)
        .stdout_has(&format!("::add-mask::{TOKEN}\n"))
        .stdout_has(&format!(
            "::add-mask::{}\n",
            base64::engine::general_purpose::STANDARD.encode(PASSWORD)
        ));
    assert!(
        !run.stdout.contains("::add-mask::1234"),
        "a short value is not masked"
    );
}

#[test]
fn scan_finds_values_in_tracked_and_staged_files_and_skips_ignored_ones() {
    let p = project();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .current_dir(p.dir.path())
            .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
            .args(args)
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q"]);
    p.write(".gitignore", ".env\nignored.log\n");
    p.write("clean.txt", "nothing here\n");
    p.write("ignored.log", &format!("{TOKEN}\n"));
    p.write(
        "src/config.py",
        &format!(
            "x = 1\nKEY = \"{}\"\n",
            base64::engine::general_purpose::STANDARD.encode(TOKEN)
        ),
    );
    // Tracked, as a leak usually is.
    git(&["add", ".gitignore", "clean.txt", "src/config.py"]);
    git(&["commit", "-q", "-m", "planted"]);
    let run = p.run(&["scan"]);
    run.code(1).stdout_has("src/config.py:2: TOKEN\n");
    assert!(!run.stdout.contains("ignored.log"), "{}", run.stdout);
    assert!(!run.stdout.contains(".env"), "{}", run.stdout);
    assert_clean(&run);
    let json: serde_json::Value = serde_json::from_str(&p.run(&["scan", "--json"]).stdout).unwrap();
    assert_eq!(json["found"][0]["name"], "TOKEN");
    // A staged file, as staged: the working copy no longer has the value.
    std::fs::remove_file(p.path("src/config.py")).unwrap();
    p.run(&["scan"]).code(0);
    p.write("staged.txt", &format!("pw {PASSWORD}\n"));
    git(&["add", "staged.txt"]);
    p.write("staged.txt", "fixed in the working tree only\n");
    let staged = p.run(&["scan", "--staged"]);
    staged.code(1).stdout_has("staged.txt:1: PASSWORD\n");
    assert_clean(&staged);
}
