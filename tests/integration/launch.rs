//! Launch modes with real processes: exec keeps the PID; supervise forwards signals and passes
//! the child's exit through.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{Project, script, wait_until};

#[track_caller]
fn wait_for(path: &Path) {
    wait_until(
        &format!("{} to appear", path.display()),
        Duration::from_secs(10),
        || path.exists(),
    );
}

fn project() -> Project {
    let p = Project::with_manifest("[secrets]\nTOKEN = \"token\"\n");
    p.write(".env", "TOKEN=t\n");
    p
}

#[test]
fn exec_replaces_secret_run_keeping_the_pid() {
    let p = project();
    let child = p
        .cmd()
        .args([
            "--exec",
            "--",
            "sh",
            "-c",
            "echo $$ > pid.out; echo \"$TOKEN\" > token.out",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(p.path("pid.out")).unwrap().trim(),
        pid.to_string()
    );
    assert_eq!(
        std::fs::read_to_string(p.path("token.out")).unwrap().trim(),
        "t"
    );
}

#[test]
fn supervise_forwards_signals_and_passes_the_exit_code() {
    let p = project();
    script(
        &p,
        "child.sh",
        r#"
for s in QUIT USR1 USR2 WINCH HUP INT; do trap "echo $s >> got.log" $s; done
trap 'echo TERM >> got.log; exit 7' TERM
touch ready
while :; do sleep 0.05; done
"#,
    );
    let mut sup = p.cmd().args(["--", "./child.sh"]).spawn().unwrap();
    wait_for(&p.path("ready"));
    let pid = Pid::from_raw(sup.id() as i32);
    // stdin is not a terminal here, so SIGINT did not reach the child from one: it is forwarded.
    for sig in [
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGHUP,
        Signal::SIGINT,
    ] {
        kill(pid, sig).unwrap();
        let log = p.path("got.log");
        let name = sig.as_str().trim_start_matches("SIG").to_owned();
        wait_until(
            &format!("the child to get {name}"),
            Duration::from_secs(10),
            || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains(&name)
            },
        );
    }
    kill(pid, Signal::SIGTERM).unwrap();
    let status = sup.wait().unwrap();
    assert_eq!(status.code(), Some(7), "the child's code passes through");
    let log = std::fs::read_to_string(p.path("got.log")).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["QUIT", "USR1", "USR2", "WINCH", "HUP", "INT", "TERM"]
    );
}

#[test]
fn supervised_child_killed_by_forwarded_signal_gives_128_plus_n() {
    let p = project();
    script(&p, "child.sh", "touch ready; exec sleep 30");
    let mut sup = p.cmd().args(["--", "./child.sh"]).spawn().unwrap();
    wait_for(&p.path("ready"));
    // `exec sleep` may not have replaced the shell yet; SIGTERM kills either with 143.
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(sup.wait().unwrap().code(), Some(143));
}

#[test]
fn supervised_child_keeps_stdio() {
    let p = project();
    let out = p
        .cmd()
        .args(["--", "sh", "-c", "cat; echo err >&2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"through stdin\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
}

#[test]
fn argv0_and_arguments_are_passed_as_written() {
    let p = project();
    let out = p.run(&[
        "--",
        "sh",
        "-c",
        "printf '%s|' \"$0\" \"$@\"",
        "zero",
        "a b",
        "",
        "--",
        "-v",
    ]);
    out.code(0);
    assert_eq!(out.stdout, "zero|a b||--|-v|");
}

/// Runs secret-run (at -vv) on a pseudo-terminal (Python's pty), types Ctrl-C once, and returns
/// what the terminal showed and how many SIGINTs the child counted.
fn ctrl_c(extra: &[&str]) -> (String, usize) {
    let p = project();
    p.write(
        "counter.py",
        "import os, signal, time\nsignal.signal(signal.SIGINT, lambda *a: open('ints.log', 'a').write('int\\n'))\nopen('ready', 'w').close()\nwhile not os.path.exists('stop'):\n    time.sleep(0.01)\n",
    );
    crate::support::script(&p, "bin/counter", "exec python3 counter.py");
    let mut argv: Vec<String> = vec![crate::support::bin().to_owned(), "-vv".to_owned()];
    argv.extend(extra.iter().map(|s| (*s).to_owned()));
    argv.extend(["--".to_owned(), "./bin/counter".to_owned()]);
    let driver = format!(
        r#"import os, pty, sys, time
argv = {argv:?}
pid, fd = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
end = time.time() + 10
while not os.path.exists("ready") and time.time() < end:
    time.sleep(0.02)
time.sleep(0.1)
os.write(fd, b"\x03")
time.sleep(0.5)
open("stop", "w").close()
out = b""
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(driver)
        .current_dir(p.dir.path())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("python3");
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "secret-run on the terminal:\n{shown}"
    );
    let ints = std::fs::read_to_string(p.path("ints.log"))
        .unwrap_or_default()
        .lines()
        .count();
    (shown, ints)
}

#[test]
fn ctrl_c_on_a_terminal_is_not_sent_twice() {
    // Both are in the terminal's foreground group: the child has it from the terminal already.
    let (shown, ints) = ctrl_c(&[]);
    assert!(shown.contains("SIGINT came from the terminal"), "{shown}");
    assert!(!shown.contains("forwarding"), "{shown}");
    assert_eq!(ints, 1);
    // In a group of its own the child is given the terminal, as a shell gives a job: Ctrl-C
    // reaches it directly, and secret-run (no longer in the foreground) sends nothing more.
    let (shown, ints) = ctrl_c(&["--process-group"]);
    assert!(!shown.contains("forwarding"), "{shown}");
    assert_eq!(ints, 1);
}
