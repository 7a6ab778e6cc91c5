//! Rotation and PID-1 duties, with real processes and real signals: reload on SIGHUP and on
//! `watch`, the restart / signal / overlap policies, coalescing, backend outages, restarts on
//! failure with last-known-good values, zombies, PR_SET_PDEATHSIG, and the audit log.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{Project, Supervised, assert_gone, script, wait_until};

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The reload records with this outcome (changed, unchanged, failed).
fn reloads(p: &Project, outcome: &str) -> Vec<serde_json::Value> {
    audit(p, "reload")
        .into_iter()
        .filter(|r| r["outcome"] == outcome)
        .collect()
}

/// The audit records of one event type.
fn audit(p: &Project, event: &str) -> Vec<serde_json::Value> {
    lines(&p.path("audit.jsonl"))
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

/// A child that logs `start PID VALUE` and, on SIGTERM, `term PID`, into events.log, and logs
/// `hup PID VALUE` on SIGHUP without exiting.
fn service(p: &Project) -> PathBuf {
    script(
        p,
        "bin/service",
        r#"trap 'echo "term $$" >> events.log; exit 0' TERM
trap 'echo "hup $$ $TOKEN" >> events.log' HUP
echo "start $$ $TOKEN" >> events.log
while :; do sleep 0.05; done"#,
    )
}

/// A project whose TOKEN comes from run/token (file backend), with `[run]` settings and an audit log.
fn project(run: &str) -> Project {
    let p = Project::with_manifest(&format!(
        "name = \"rotation-test\"\n[backends.files]\nkind = \"file\"\ndir = \"run\"\n[secrets]\nTOKEN = {{ backend = \"files\", path = \"token\" }}\n[run]\n{run}\n[audit]\npath = \"audit.jsonl\"\n"
    ));
    p.write("run/token", "CANARY-rotation-v1\n");
    service(&p);
    p
}

fn starts(p: &Project) -> Vec<String> {
    lines(&p.path("events.log"))
        .into_iter()
        .filter(|l| l.starts_with("start "))
        .collect()
}

#[test]
fn sighup_with_a_changed_value_restarts_the_child_with_it() {
    let p = project("min_restart_interval = \"1s\"");
    let run = Supervised::start(&p, &["--", "./bin/service"]);
    wait_until("the first child", Duration::from_secs(5), || {
        starts(&p).len() == 1
    });
    // logrotate moves the log away: the next records go to a new file.
    std::fs::rename(p.path("audit.jsonl"), p.path("audit.jsonl.1")).unwrap();
    p.write("run/token", "CANARY-rotation-v2\n");
    run.signal(Signal::SIGHUP);
    wait_until("the second child", Duration::from_secs(5), || {
        starts(&p).len() == 2
    });
    let log = lines(&p.path("events.log"));
    let first_pid = log[0].split(' ').nth(1).unwrap().to_owned();
    assert!(log[0].ends_with("CANARY-rotation-v1"), "{log:?}");
    // The old child got SIGTERM, and ended before the new one started.
    assert_eq!(log[1], format!("term {first_pid}"), "{log:?}");
    assert!(
        log[2].starts_with("start ") && log[2].ends_with("CANARY-rotation-v2"),
        "{log:?}"
    );

    let stderr = run.stop_expecting(0);
    let changes = reloads(&p, "changed");
    assert_eq!(changes[0]["changed"], serde_json::json!(["TOKEN"]));
    assert_eq!(changes[0]["trigger"], "signal");
    assert_eq!(audit(&p, "restart").len(), 1);
    for event in ["resolve", "reload", "stop", "restart", "start", "exit"] {
        assert!(!audit(&p, event).is_empty(), "no {event} record");
    }
    let rotated = std::fs::read_to_string(p.path("audit.jsonl.1")).unwrap();
    assert!(rotated.contains("\"event\":\"start\"") && !rotated.contains("\"event\":\"restart\""));
    let text = std::fs::read_to_string(p.path("audit.jsonl")).unwrap();
    assert!(
        !text.contains("CANARY"),
        "a value in the audit log:\n{text}"
    );
    assert!(text.contains("\"name\":\"rotation-test\""));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p.path("audit.jsonl"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!stderr.contains("CANARY"), "{stderr}");
}

#[cfg(feature = "vault")]
#[test]
fn sighup_picks_up_a_secret_rotated_in_openbao() {
    let bao = crate::openbao::shared();
    bao.ok(&[
        "kv",
        "put",
        "secret/t-rotate/token",
        "value=CANARY-rotation-v1",
    ]);
    let p = Project::with_manifest(&format!(
        "[backends.vault]\nkind = \"vault\"\naddress = \"{}\"\n[secrets]\nTOKEN = {{ backend = \"vault\", path = \"t-rotate/token\" }}\n[run]\nmin_restart_interval = \"1s\"\n[audit]\npath = \"audit.jsonl\"\n",
        bao.addr
    ));
    service(&p);
    let run = Supervised::start_env(
        &p,
        &["--", "./bin/service"],
        &[("VAULT_TOKEN", crate::openbao::ROOT_TOKEN)],
    );
    wait_until("the first child", Duration::from_secs(5), || {
        starts(&p).len() == 1
    });
    bao.ok(&[
        "kv",
        "put",
        "secret/t-rotate/token",
        "value=CANARY-rotation-v2",
    ]);
    run.signal(Signal::SIGHUP);
    wait_until("the second child", Duration::from_secs(10), || {
        starts(&p).len() == 2
    });
    assert!(
        starts(&p)[1].ends_with("CANARY-rotation-v2"),
        "{:?}",
        starts(&p)
    );
    // The audit log names the KV version each resolve read.
    let resolves = audit(&p, "resolve");
    assert_eq!(resolves[0]["vars"][0]["version"], "1");
    assert_eq!(resolves.last().unwrap()["vars"][0]["version"], "2");
    let stderr = run.stop_expecting(0);
    assert!(!stderr.contains("CANARY"), "{stderr}");
}

#[test]
fn sighup_without_a_change_restarts_nothing_unless_always() {
    let p = project("");
    let run = Supervised::start(&p, &["--", "./bin/service"]);
    wait_until("the child", Duration::from_secs(5), || {
        starts(&p).len() == 1
    });
    run.signal(Signal::SIGHUP);
    wait_until("the reload's verdict", Duration::from_secs(5), || {
        !reloads(&p, "unchanged").is_empty()
    });
    assert_eq!(
        reloads(&p, "unchanged")[0]["changed"],
        serde_json::json!([])
    );
    assert_eq!(starts(&p).len(), 1);
    run.stop_expecting(0);

    let p = project("restart = \"always\"");
    let run = Supervised::start(&p, &["--", "./bin/service"]);
    wait_until("the child", Duration::from_secs(5), || {
        starts(&p).len() == 1
    });
    run.signal(Signal::SIGHUP);
    wait_until("a restart", Duration::from_secs(5), || {
        starts(&p).len() == 2
    });
    run.stop_expecting(0);
}

#[test]
fn sighup_while_the_backend_is_down_keeps_the_old_child() {
    // A provider that fails while `down` exists.
    let p = Project::with_manifest(
        "[backends.vault-ish]\nkind = \"command\"\nargv = [\"./bin/provider\"]\n[secrets]\nTOKEN = { backend = \"vault-ish\", path = \"token\" }\n[audit]\npath = \"audit.jsonl\"\n",
    );
    script(
        &p,
        "bin/provider",
        "if [ -e down ]; then echo 'connection refused' >&2; exit 1; fi; cat value",
    );
    p.write("value", "CANARY-rotation-v1");
    service(&p);
    let run = Supervised::start(&p, &["--", "./bin/service"]);
    wait_until("the child", Duration::from_secs(5), || {
        starts(&p).len() == 1
    });
    p.write("down", "");
    p.write("value", "CANARY-rotation-v2");
    run.signal(Signal::SIGHUP);
    wait_until("the failed reload", Duration::from_secs(10), || {
        !reloads(&p, "failed").is_empty()
    });
    assert_eq!(starts(&p).len(), 1, "the child was restarted");
    let pid: i32 = starts(&p)[0].split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        kill(Pid::from_raw(pid), None).is_ok(),
        "the old child is gone"
    );
    // The audit log says which variable failed and how, never the error's text.
    let failed = &reloads(&p, "failed")[0];
    assert_eq!(failed["code"], 69, "{failed}");
    assert_eq!(failed["failed"][0]["outcome"], "unavailable", "{failed}");
    assert!(failed.get("error").is_none(), "{failed}");

    // The backend comes back: the next reload applies the rotation.
    std::fs::remove_file(p.path("down")).unwrap();
    run.signal(Signal::SIGHUP);
    wait_until("the restart", Duration::from_secs(10), || {
        starts(&p).len() == 2
    });
    assert!(starts(&p)[1].ends_with("CANARY-rotation-v2"));
    let stderr = run.stop_expecting(0);
    assert!(!stderr.contains("CANARY"), "{stderr}");
}

#[test]
fn a_storm_of_sighups_coalesces_and_never_runs_two_children() {
    let p = project("min_restart_interval = \"2s\"");
    let run = Supervised::start(&p, &["--", "./bin/service"]);
    wait_until("the child", Duration::from_secs(5), || {
        starts(&p).len() == 1
    });
    p.write("run/token", "CANARY-rotation-v2\n");
    for _ in 0..100 {
        run.signal(Signal::SIGHUP);
        std::thread::sleep(Duration::from_millis(10));
    }
    // Let the coalesced reloads play out: one restart, then (after 2 s) at most one more.
    std::thread::sleep(Duration::from_secs(4));
    let restarts = starts(&p).len() - 1;
    assert!((1..=2).contains(&restarts), "{restarts} restarts");
    // Never two children: every start after the first follows the previous child's end.
    let log = lines(&p.path("events.log"));
    let mut alive = 0;
    for line in &log {
        if line.starts_with("start ") {
            alive += 1;
        } else if line.starts_with("term ") {
            alive -= 1;
        }
        assert!(alive <= 1, "two children at once: {log:?}");
    }
    run.stop_expecting(0);
}

#[test]
fn signal_policy_signals_the_child_and_does_not_restart_it() {
    let p = project("on_change = \"signal\"\nchild_signal = \"SIGHUP\"");
    let run = Supervised::start(&p, &["--", "./bin/service"]);
    wait_until("the child", Duration::from_secs(5), || {
        starts(&p).len() == 1
    });
    p.write("run/token", "CANARY-rotation-v2\n");
    run.signal(Signal::SIGHUP);
    wait_until("the child's SIGHUP", Duration::from_secs(5), || {
        lines(&p.path("events.log"))
            .iter()
            .any(|l| l.starts_with("hup "))
    });
    assert_eq!(starts(&p).len(), 1);
    assert_eq!(audit(&p, "signal").len(), 1);
    run.stop_expecting(0);
}

#[test]
fn watch_picks_up_a_rotation_without_a_signal() {
    let p = project("watch = \"500ms\"\nmin_restart_interval = \"1s\"");
    let run = Supervised::start(&p, &["--", "./bin/service"]);
    wait_until("the child", Duration::from_secs(5), || {
        starts(&p).len() == 1
    });
    p.write("run/token", "CANARY-rotation-v2\n");
    wait_until("the restart", Duration::from_secs(5), || {
        starts(&p).len() == 2
    });
    assert!(starts(&p)[1].ends_with("CANARY-rotation-v2"));
    assert_eq!(audit(&p, "reload").last().unwrap()["trigger"], "watch");
    run.stop_expecting(0);
}

/// A TCP server in Python that shares its port (SO_REUSEPORT), answers every connection with
/// the value, marks itself ready, and on SIGTERM stops accepting and exits.
fn reuseport_server(p: &Project, port: u16) {
    let python = crate::kept::venv_bin("python");
    p.write(
        "server.py",
        &format!(
            r#"import os, signal, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("127.0.0.1", {port}))
s.listen(128)
signal.signal(signal.SIGTERM, lambda *a: (s.close(), open("events.log", "a").write(f"term {{os.getpid()}}\n"), os._exit(0)))
open("events.log", "a").write(f"start {{os.getpid()}} {{os.environ['TOKEN']}}\n")
open(f"ready-{{os.getpid()}}", "w").close()
while True:
    c, _ = s.accept()
    c.sendall(os.environ["TOKEN"].encode())
    c.close()
"#
        ),
    );
    script(
        p,
        "bin/server",
        &format!("exec {} server.py", python.display()),
    );
}

#[test]
fn overlap_hands_over_without_a_refused_connection() {
    let port = crate::kept::free_port_pair();
    let p = project(
        "on_change = \"overlap\"\nready = { cmd = [\"sh\", \"-c\", \"test $(ls ready-* | wc -l) -ge 2\"], timeout = \"10s\" }\n",
    );
    reuseport_server(&p, port);
    let run = Supervised::start(&p, &["--", "./bin/server"]);
    wait_until("the server", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut ok, mut refused) = (0, 0);
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match std::net::TcpStream::connect(("127.0.0.1", port)) {
                    Ok(mut s) => {
                        let mut answer = String::new();
                        let _ = std::io::Read::read_to_string(&mut s, &mut answer);
                        seen.insert(answer);
                        ok += 1;
                    }
                    Err(_) => refused += 1,
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, refused, seen)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    p.write("run/token", "CANARY-rotation-v2\n");
    run.signal(Signal::SIGHUP);
    wait_until("the hand-over", Duration::from_secs(15), || {
        !audit(&p, "overlap").is_empty()
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, refused, seen) = client.join().unwrap();
    assert_eq!(refused, 0, "{refused} connections refused ({ok} served)");
    assert!(seen.contains("CANARY-rotation-v2"), "{seen:?}");
    run.stop_expecting(0);
}

#[test]
fn overlap_keeps_the_old_child_when_the_new_one_never_gets_ready() {
    let p = project(
        "on_change = \"overlap\"\nready = { cmd = [\"false\"], timeout = \"1s\" }\nstop_timeout = \"2s\"",
    );
    let run = Supervised::start(&p, &["--", "./bin/service"]);
    wait_until("the child", Duration::from_secs(5), || {
        starts(&p).len() == 1
    });
    p.write("run/token", "CANARY-rotation-v2\n");
    run.signal(Signal::SIGHUP);
    wait_until("the verdict", Duration::from_secs(10), || {
        !audit(&p, "overlap-failed").is_empty()
    });
    let first: i32 = starts(&p)[0].split(' ').nth(1).unwrap().parse().unwrap();
    let second: i32 = starts(&p)[1].split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        kill(Pid::from_raw(first), None).is_ok(),
        "the old child was stopped"
    );
    assert_gone(second);
    run.stop_expecting(0);
}

#[test]
fn a_failing_child_restarts_on_failure_with_last_known_good_values() {
    let p = Project::with_manifest(
        "[backends.flaky]\nkind = \"command\"\nargv = [\"./bin/provider\"]\n[secrets]\nTOKEN = { backend = \"flaky\", path = \"token\" }\n[run]\nrestart_on_exit = \"on-failure\"\n[audit]\npath = \"audit.jsonl\"\n",
    );
    script(
        &p,
        "bin/provider",
        "if [ -e down ]; then exit 1; fi; echo CANARY-rotation-v1",
    );
    // Fails on its first two runs (after taking the backend down), then stays up.
    script(
        &p,
        "bin/crashy",
        r#"trap 'exit 0' TERM
echo "start $$ $TOKEN" >> events.log
n=$(cat runs 2>/dev/null || echo 0); echo $((n + 1)) > runs
if [ "$n" -lt 2 ]; then touch down; exit 3; fi
while :; do sleep 0.05; done"#,
    );
    let run = Supervised::start(&p, &["--", "./bin/crashy"]);
    wait_until("the third start", Duration::from_secs(10), || {
        starts(&p).len() == 3
    });
    assert!(starts(&p).iter().all(|s| s.ends_with("CANARY-rotation-v1")));
    assert!(
        !audit(&p, "stale-serve").is_empty(),
        "no stale-serve record"
    );
    let stderr = run.stop_expecting(0);
    assert!(!stderr.contains("CANARY"), "{stderr}");
}

#[test]
fn the_child_killed_gives_137_and_its_own_exit_ends_the_run() {
    let p = project("");
    let run = Supervised::start(&p, &["--", "./bin/service"]);
    wait_until("the child", Duration::from_secs(5), || {
        starts(&p).len() == 1
    });
    let pid: i32 = starts(&p)[0].split(' ').nth(1).unwrap().parse().unwrap();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    assert_eq!(run.wait(Duration::from_secs(5)).0, 137);
    let exits = audit(&p, "exit");
    assert_eq!(exits[0]["code"], 137);
    assert_eq!(exits[0]["signal"], "SIGKILL");
}

#[test]
fn a_sigkilled_supervisor_leaves_no_child_behind() {
    let p = project("");
    let run = Supervised::start(&p, &["--", "./bin/service"]);
    wait_until("the child", Duration::from_secs(5), || {
        starts(&p).len() == 1
    });
    let pid: i32 = starts(&p)[0].split(' ').nth(1).unwrap().parse().unwrap();
    run.signal(Signal::SIGKILL);
    assert_gone(pid);
}

/// Counts zombies among the processes whose parent is `parent`.
fn zombie_children(parent: i32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            let after = stat.rsplit_once(") ").map_or("", |(_, a)| a);
            let mut f = after.split(' ');
            let state = f.next();
            let ppid = f.next().and_then(|p| p.parse::<i32>().ok());
            state == Some("Z") && ppid == Some(parent)
        })
        .count()
}

#[test]
fn subreaper_reaps_the_orphans_of_the_child() {
    let p = project("");
    // The child leaves two orphans that exit at once, then keeps running.
    script(
        &p,
        "bin/parent",
        "trap 'exit 0' TERM; (sleep 0.1 &); (sleep 0.1 &); echo \"start $$ $TOKEN\" >> events.log; while :; do sleep 0.05; done",
    );
    let run = Supervised::start(&p, &["--subreaper", "--", "./bin/parent"]);
    wait_until("the child", Duration::from_secs(5), || {
        starts(&p).len() == 1
    });
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        zombie_children(run.pid().as_raw()),
        0,
        "zombies left under secret-run"
    );
    run.stop_expecting(0);
}

#[test]
fn as_pid_1_it_reaps_every_zombie() {
    let p = project("");
    // Inside a new PID namespace secret-run is PID 1; the child's orphans become its children.
    script(
        &p,
        "bin/parent",
        "(sleep 0.1 &); (sleep 0.1 &); sleep 0.8; ps -e -o stat= | grep -c '^Z' > zombies.txt; exit 0",
    );
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(crate::support::bin())
        .args(["--", "./bin/parent"])
        .current_dir(p.dir.path())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("unshare");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(p.path("zombies.txt"))
            .unwrap()
            .trim(),
        "0"
    );
}

#[test]
fn process_group_signals_reach_the_whole_group() {
    let p = project("");
    // A shell that runs a grandchild in the foreground: only a group signal reaches both.
    script(
        &p,
        "bin/group",
        "echo \"start $$ $TOKEN\" >> events.log; sh -c 'echo $$ > grandchild.pid; exec sleep 30'",
    );
    let run = Supervised::start(&p, &["--process-group", "--", "./bin/group"]);
    wait_until("the grandchild", Duration::from_secs(5), || {
        p.path("grandchild.pid").exists()
    });
    let grandchild: i32 = std::fs::read_to_string(p.path("grandchild.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    run.stop_expecting(143);
    assert_gone(grandchild);
}

#[test]
fn run_and_audit_errors_are_reported_before_anything_starts() {
    let p = Project::with_manifest(
        "[secrets]\nA = \"a\"\n[run]\non_change = \"overlap\"\nstop_timeout = \"soon\"\nreload_signal = \"SIGNOPE\"\n",
    );
    let r = p.run(&["--", "true"]);
    r.code(78).stderr_has("[run]");
    let p = Project::with_manifest("[secrets]\n[run]\non_change = \"overlap\"\n");
    p.run(&["--", "true"]).code(78).stderr_has("needs `ready");
    let p = Project::with_manifest("[secrets]\n[audit]\npath = \"no/such/dir/audit.jsonl\"\n");
    p.write(".env", "");
    let r = p.run(&["--", "sh", "-c", "echo started > started"]);
    r.code(73).stderr_has("cannot open the audit log");
    assert!(!p.path("started").exists());
}

#[test]
fn exec_mode_audits_the_resolve_and_the_exec() {
    let p = project("");
    let r = p.run(&["--exec", "--", "sh", "-c", "echo $$ > pid"]);
    r.code(0);
    let pid: u64 = std::fs::read_to_string(p.path("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(audit(&p, "resolve")[0]["vars"][0]["outcome"], "ok");
    assert_eq!(audit(&p, "exec")[0]["pid"], pid);
    assert!(
        !std::fs::read_to_string(p.path("audit.jsonl"))
            .unwrap()
            .contains("CANARY")
    );
}

#[test]
fn restart_spread_applies_a_change_after_a_random_delay_within_the_window() {
    let p = project("restart_spread = \"2s\"\nmin_restart_interval = \"100ms\"");
    let run = Supervised::start(&p, &["--", "bin/service"]);
    wait_until("the first child", Duration::from_secs(10), || {
        starts(&p).len() == 1
    });
    p.write("run/token", "CANARY-rotation-v2\n");
    run.signal(Signal::SIGHUP);
    wait_until("the restart", Duration::from_secs(10), || {
        starts(&p).len() == 2
    });
    assert!(starts(&p)[1].ends_with("CANARY-rotation-v2"));
    let waited = audit(&p, "spread-wait");
    let delay = waited[0]["delay_ms"].as_u64().unwrap();
    assert!(delay <= 2000, "{delay}");
    // The old child was stopped no sooner than the delay after the change was found.
    let ms = |v: &serde_json::Value| {
        let ts = v["ts"].as_str().unwrap();
        humantime::parse_rfc3339(ts).unwrap()
    };
    let found = ms(&reloads(&p, "changed")[0]);
    let restarted = ms(&audit(&p, "restart")[0]);
    let took = restarted.duration_since(found).unwrap();
    assert!(
        took + Duration::from_millis(5) >= Duration::from_millis(delay),
        "{took:?} < {delay} ms"
    );
    run.stop_expecting(0);
}

#[cfg(feature = "vault")]
#[test]
fn watch_on_vault_reads_metadata_and_only_a_changed_or_deleted_secret_again() {
    // An OpenBao of its own, whose audit device logs every request: the reads are counted
    // there, not from secret-run's own account.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("bao-audit.log");
    let config = dir.path().join("audit.hcl");
    std::fs::write(
        &config,
        format!(
            "audit \"file\" \"to-file\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
            log.display()
        ),
    )
    .unwrap();
    let bao = crate::openbao::Bao::start(&[&format!("-config={}", config.display())]);
    // The reads of `path` the server answered (not the writes of the test).
    let served = |path: &str| {
        lines(&log)
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["type"] == "response"
                    && v["request"]["operation"] == "read"
                    && v["request"]["path"] == path
            })
            .count()
    };
    let put = |v: &str| {
        bao.ok(&[
            "kv",
            "put",
            "secret/t-watch-meta/token",
            &format!("value={v}"),
        ]);
    };
    put("CANARY-rotation-v1");
    bao.ok(&[
        "kv",
        "put",
        "secret/t-watch-meta/other",
        "value=CANARY-other-2b1c",
    ]);
    let p = Project::with_manifest(&format!(
        "[backends.vault]\nkind = \"vault\"\naddress = \"{}\"\n[secrets]\nTOKEN = {{ backend = \"vault\", path = \"t-watch-meta/token\" }}\nOTHER = {{ backend = \"vault\", path = \"t-watch-meta/other\" }}\n[run]\nwatch = \"1s\"\nmin_restart_interval = \"100ms\"\n[audit]\npath = \"audit.jsonl\"\n",
        bao.addr
    ));
    service(&p);
    let run = Supervised::start_env(
        &p,
        &["-vvv", "--", "./bin/service"],
        &[("VAULT_TOKEN", crate::openbao::ROOT_TOKEN)],
    );
    wait_until("the first child", Duration::from_secs(10), || {
        starts(&p).len() == 1
    });
    let (token, other) = (
        "secret/data/t-watch-meta/token",
        "secret/data/t-watch-meta/other",
    );
    // Thirty ticks (~30 s) without a change: metadata asked each time, no value read again.
    wait_until("30 ticks", Duration::from_secs(60), || {
        served("secret/metadata/t-watch-meta/other") >= 30
    });
    assert_eq!((served(token), served(other)), (1, 1));
    assert_eq!(starts(&p).len(), 1);
    put("CANARY-rotation-v2");
    wait_until("the new version", Duration::from_secs(10), || {
        starts(&p).len() == 2
    });
    assert_eq!(
        (served(token), served(other)),
        (2, 1),
        "only TOKEN read again"
    );
    let log = std::fs::read_to_string(p.path("secret-run.err")).unwrap_or_default();
    assert!(log.contains("a new version; reading it"));
    assert!(starts(&p)[1].ends_with("CANARY-rotation-v2"));
    // A deleted current version is read, and fails as gone: the child keeps its value.
    bao.ok(&["kv", "delete", "secret/t-watch-meta/token"]);
    wait_until("a failed reload", Duration::from_secs(10), || {
        !reloads(&p, "failed").is_empty()
    });
    assert_eq!(starts(&p).len(), 2);
    run.stop_expecting(0);
}

#[cfg(feature = "vault")]
#[test]
fn max_concurrent_restarts_lets_one_replica_at_a_time_hand_over() {
    let bao = crate::openbao::shared();
    bao.ok(&[
        "kv",
        "put",
        "secret/t-slots/token",
        "value=CANARY-rotation-v1",
    ]);
    bao.ok(&["kv", "metadata", "delete", "secret/t-slots/locks"]);
    // Slow to stop: a hand-over takes a while, so that overlaps would show.
    let (replicas, runs) = fleet(
        3,
        "t-slots/token",
        "min_restart_interval = \"100ms\"\nmax_concurrent_restarts = { n = 1, vault = \"vault\", path = \"t-slots/locks\" }",
        "trap 'sleep 0.5; echo \"term $$\" >> events.log; exit 0' TERM\necho \"start $$ $TOKEN\" >> events.log\nwhile :; do sleep 0.05; done",
    );
    bao.ok(&[
        "kv",
        "put",
        "secret/t-slots/token",
        "value=CANARY-rotation-v2",
    ]);
    reload_fleet(&replicas, &runs, Duration::from_secs(40), true);
    // The slots were held one after another, never two at once.
    let mut held: Vec<(std::time::SystemTime, std::time::SystemTime)> = replicas
        .iter()
        .map(|p| {
            (
                timestamp(&audit(p, "slot-acquired")[0]),
                timestamp(&audit(p, "slot-released")[0]),
            )
        })
        .collect();
    held.sort();
    for pair in held.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two replicas held a slot at once: {held:?}"
        );
    }
    assert!(
        replicas.iter().any(|p| !audit(p, "slot-wait").is_empty()),
        "someone waited"
    );
    for r in runs {
        r.stop_expecting(0);
    }
}

#[cfg(feature = "vault")]
#[test]
fn a_replica_killed_while_holding_a_restart_slot_blocks_the_others_only_until_it_expires() {
    let bao = crate::openbao::shared();
    bao.ok(&[
        "kv",
        "put",
        "secret/t-slots-kill/token",
        "value=CANARY-rotation-v1",
    ]);
    let manifest = format!(
        "[backends.vault]\nkind = \"vault\"\naddress = \"{}\"\n[secrets]\nTOKEN = {{ backend = \"vault\", path = \"t-slots-kill/token\" }}\n\
         [run]\nmin_restart_interval = \"100ms\"\nstop_timeout = \"30s\"\nmax_concurrent_restarts = {{ n = 1, vault = \"vault\", path = \"t-slots-kill/locks\", ttl = \"3s\" }}\n[audit]\npath = \"audit.jsonl\"\n",
        bao.addr
    );
    let (a, b) = (
        Project::with_manifest(&manifest),
        Project::with_manifest(&manifest),
    );
    // A's child is very slow to stop: A's hand-over is still under way when A is killed.
    for (p, stop) in [(&a, "sleep 20; exit 0"), (&b, "exit 0")] {
        script(
            p,
            "bin/service",
            &format!(
                "trap '{stop}' TERM\necho \"start $$ $TOKEN\" >> events.log\nwhile :; do sleep 0.05; done"
            ),
        );
    }
    let env = [("VAULT_TOKEN", crate::openbao::ROOT_TOKEN)];
    let run_a = Supervised::start_env(&a, &["--", "./bin/service"], &env);
    let run_b = Supervised::start_env(&b, &["--", "./bin/service"], &env);
    for p in [&a, &b] {
        wait_until("the first children", Duration::from_secs(10), || {
            starts(p).len() == 1
        });
    }
    bao.ok(&[
        "kv",
        "put",
        "secret/t-slots-kill/token",
        "value=CANARY-rotation-v2",
    ]);
    run_a.signal(Signal::SIGHUP);
    wait_until("A holding the slot", Duration::from_secs(10), || {
        !audit(&a, "slot-acquired").is_empty()
    });
    run_a.signal(Signal::SIGKILL);
    run_b.signal(Signal::SIGHUP);
    // B waits, then takes the slot once A's has expired (3 s), and hands over.
    wait_until("B waiting", Duration::from_secs(10), || {
        !audit(&b, "slot-wait").is_empty()
    });
    wait_until("B on the new value", Duration::from_secs(30), || {
        starts(&b).len() == 2
    });
    assert!(starts(&b)[1].ends_with("CANARY-rotation-v2"));
    assert_eq!(audit(&b, "slot-acquired").len(), 1);
    drop(run_a);
    run_b.stop_expecting(0);
}

/// `count` replicas of one service, each supervised with a TOKEN from OpenBao at `path`, the
/// `[run]` settings `run`, and the child `body`; returns once every first child has started.
#[cfg(feature = "vault")]
fn fleet(count: usize, path: &str, run: &str, body: &str) -> (Vec<Project>, Vec<Supervised>) {
    let bao = crate::openbao::shared();
    let manifest = format!(
        "[backends.vault]\nkind = \"vault\"\naddress = \"{}\"\n[secrets]\nTOKEN = {{ backend = \"vault\", path = \"{path}\" }}\n[run]\n{run}\n[audit]\npath = \"audit.jsonl\"\n",
        bao.addr
    );
    let replicas: Vec<Project> = (0..count)
        .map(|_| Project::with_manifest(&manifest))
        .collect();
    let runs = replicas
        .iter()
        .map(|p| {
            script(p, "bin/service", body);
            Supervised::start_env(
                p,
                &["--", "./bin/service"],
                &[("VAULT_TOKEN", crate::openbao::ROOT_TOKEN)],
            )
        })
        .collect();
    for p in &replicas {
        wait_until("each first child", Duration::from_secs(30), || {
            starts(p).len() == 1
        });
    }
    (replicas, runs)
}

/// SIGHUP to every replica of `fleet`; returns once each runs a second child, on the value
/// `CANARY-rotation-v2`, within `limit` (and, with `slots`, has given its restart slot back).
#[cfg(feature = "vault")]
fn reload_fleet(replicas: &[Project], runs: &[Supervised], limit: Duration, slots: bool) {
    for r in runs {
        r.signal(Signal::SIGHUP);
    }
    for p in replicas {
        wait_until("every replica on the new value", limit, || {
            starts(p).len() == 2 && (!slots || !audit(p, "slot-released").is_empty())
        });
        assert!(starts(p)[1].ends_with("CANARY-rotation-v2"));
    }
}

#[cfg(feature = "vault")]
fn timestamp(v: &serde_json::Value) -> std::time::SystemTime {
    humantime::parse_rfc3339(v["ts"].as_str().unwrap()).unwrap()
}

#[cfg(feature = "vault")]
#[test]
fn a_rotation_on_twenty_replicas_with_restart_spread_restarts_them_across_the_window() {
    let bao = crate::openbao::shared();
    let put = |v: &str| {
        bao.ok(&[
            "kv",
            "put",
            "secret/t-spread20/token",
            &format!("value={v}"),
        ])
    };
    put("CANARY-rotation-v1");
    let (replicas, runs) = fleet(
        20,
        "t-spread20/token",
        "restart_spread = \"5s\"\nmin_restart_interval = \"100ms\"",
        "trap 'echo \"term $$\" >> events.log; exit 0' TERM\necho \"start $$ $TOKEN\" >> events.log\nwhile :; do sleep 1 & wait $!; done",
    );
    put("CANARY-rotation-v2");
    let signalled = std::time::SystemTime::now();
    reload_fleet(&replicas, &runs, Duration::from_secs(60), false);
    // Each replica drew its own delay within the window, and restarted after it.
    let mut restarts = Vec::new();
    for p in &replicas {
        let delay = audit(p, "spread-wait")[0]["delay_ms"].as_u64().unwrap();
        assert!(delay <= 5000, "{delay}");
        let restarted = timestamp(&audit(p, "restart")[0]);
        let after = restarted.duration_since(signalled).unwrap();
        assert!(
            after >= Duration::from_millis(delay),
            "{after:?} < {delay} ms"
        );
        restarts.push(after);
    }
    restarts.sort();
    let span = restarts[19] - restarts[0];
    // 20 uniform draws over 5 s span less than 2 s once in a million runs.
    assert!(
        span >= Duration::from_secs(2),
        "restarts not spread: {restarts:?}"
    );
    for r in runs {
        r.stop_expecting(0);
    }
}

#[cfg(feature = "vault")]
#[test]
fn twenty_replicas_with_two_restart_slots_never_have_more_than_two_between_stop_and_ready() {
    let bao = crate::openbao::shared();
    let put = |v: &str| bao.ok(&["kv", "put", "secret/t-slots20/token", &format!("value={v}")]);
    put("CANARY-rotation-v1");
    bao.ok(&["kv", "metadata", "delete", "secret/t-slots20/locks"]);
    // Slow to stop (0.3 s), slow to become ready (0.4 s after it starts).
    let (replicas, runs) = fleet(
        20,
        "t-slots20/token",
        "min_restart_interval = \"100ms\"\nready = { cmd = [\"sh\", \"-c\", \"test -f ready.$SECRET_RUN_CHILD_PID\"], timeout = \"30s\" }\nmax_concurrent_restarts = { n = 2, vault = \"vault\", path = \"t-slots20/locks\" }",
        "trap 'sleep 0.3; echo \"term $$\" >> events.log; exit 0' TERM\necho \"start $$ $TOKEN\" >> events.log\nsleep 0.4\n: > ready.$$\nwhile :; do sleep 1 & wait $!; done",
    );
    put("CANARY-rotation-v2");
    reload_fleet(&replicas, &runs, Duration::from_secs(120), true);
    // Each replica was out of service from its stop to its new child's readiness, inside the
    // slot it held: from `slot-acquired` to `ready`.
    let mut edges = Vec::new();
    for p in &replicas {
        let acquired = timestamp(&audit(p, "slot-acquired")[0]);
        let ready = &audit(p, "ready")[0];
        assert_eq!(
            ready["pid"],
            audit(p, "restart")[0]["pid"],
            "the restarted child is the one found ready"
        );
        let ready = timestamp(ready);
        assert!(ready > acquired);
        edges.push((acquired, 1));
        edges.push((ready, -1));
    }
    // Ends before starts at the same instant: a slot given back and taken at once.
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, step) in &edges {
        now += step;
        most = most.max(now);
    }
    assert!(most <= 2, "{most} replicas between stop and ready at once");
    assert_eq!(most, 2, "two slots were used at once");
    for r in runs {
        r.stop_expecting(0);
    }
}
