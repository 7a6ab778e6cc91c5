//! `[run] listen` and `ready.notify` (issue 10), with real sockets on loopback, a client that
//! connects every 10 ms through every hand-over, and services that are slow to start and speak
//! the socket-activation and sd_notify protocols the way real ones do.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::{Project, Supervised, poll_until, wait_until};

/// A service in Python: takes a while to start (`START_DELAY`), serves `TOKEN` on the socket
/// it got at fd 3 (or binds `BIND_PORT` itself, with SO_REUSEADDR, when there is none), tells
/// `READY=1` on `NOTIFY_SOCKET` when asked to (not when its value starts with `never`; by a
/// grandchild when it starts with `grandchild`), and on SIGTERM stops accepting, finishes the
/// connection in hand and exits. Each step goes to events.log.
const SERVICE: &str = r#"
import os, signal, socket, subprocess, sys, time
token = os.environ["TOKEN"]
def log(line):
    with open("events.log", "a") as f:
        f.write(f"{line}\n")
log(f"start {os.getpid()} {token} listen_pid={os.environ.get('LISTEN_PID')} fds={os.environ.get('LISTEN_FDS')} names={os.environ.get('LISTEN_FDNAMES')} notify={os.environ.get('NOTIFY_SOCKET')}")
stop = False
def term(*_):
    global stop
    stop = True
    log(f"term {os.getpid()}")
signal.signal(signal.SIGTERM, term)
time.sleep(float(os.environ.get("START_DELAY", "0.3")))
if os.environ.get("LISTEN_PID") == str(os.getpid()):
    s = socket.socket(fileno=3)
else:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(os.environ["BIND_PORT"])))
    s.listen(64)
def notify(message):
    addr = os.environ["NOTIFY_SOCKET"]
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    n.connect(addr)
    n.sendall(message.encode())
    n.close()
if "NOTIFY_SOCKET" in os.environ:
    if token.startswith("grandchild"):
        subprocess.run([sys.executable, "-c", "import os, socket; a = os.environ['NOTIFY_SOCKET']; a = '\\0' + a[1:] if a.startswith('@') else a; n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); n.connect(a); n.sendall(b'READY=1')"])
    elif not token.startswith("never"):
        time.sleep(float(os.environ.get("READY_DELAY", "0")))
        # Logged before it is said: secret-run may stop the old child the moment it hears it.
        log(f"ready {os.getpid()}")
        notify("READY=1\nSTATUS=serving " + token)
s.settimeout(0.05)
# A service stuck in its start-up takes no connection: they wait for another process.
stuck = "NOTIFY_SOCKET" in os.environ and (token.startswith("never") or token.startswith("grandchild"))
while not stop:
    if stuck:
        time.sleep(0.05)
        continue
    try:
        c, _ = s.accept()
    except (socket.timeout, InterruptedError):
        continue
    with c:
        c.settimeout(5)
        try:
            c.recv(256)
            c.sendall(token.encode() + b"\n")
        except OSError:
            pass
log(f"exit {os.getpid()}")
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A project whose TOKEN comes from run/token, running the service with `[run]` settings.
fn project(run: &str) -> Project {
    let p = Project::with_manifest(&format!(
        "[backends.files]\nkind = \"file\"\ndir = \"run\"\n[secrets]\nTOKEN = {{ backend = \"files\", path = \"token\" }}\n[run]\n{run}\n[audit]\npath = \"audit.jsonl\"\n"
    ));
    p.write("run/token", "v0\n");
    p.write("service.py", SERVICE);
    p
}

fn rotate(p: &Project, run: &Supervised, value: &str) {
    p.write("run/token.tmp", &format!("{value}\n"));
    std::fs::rename(p.path("run/token.tmp"), p.path("run/token")).unwrap();
    run.signal(Signal::SIGHUP);
}

fn events(p: &Project) -> Vec<String> {
    std::fs::read_to_string(p.path("events.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn pid_of_start(p: &Project, value: &str) -> Option<String> {
    events(p).iter().find_map(|l| {
        let mut parts = l.split(' ');
        (parts.next() == Some("start") && l.contains(&format!(" {value} ")))
            .then(|| parts.next().unwrap_or_default().to_owned())
    })
}

fn position(p: &Project, line: &str) -> Option<usize> {
    events(p).iter().position(|l| l == line)
}

/// Asks the service once; the value it serves (the body, for an HTTP answer).
fn ask(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let body = match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/") => body,
        _ => &out,
    };
    Ok(body.trim().to_owned())
}

/// A client asking every 10 ms until stopped: how many were refused, failed, answered.
struct Client {
    stop: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Client {
    fn start(addr: SocketAddr) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let (s, r, f, a) = (
            stop.clone(),
            refused.clone(),
            failed.clone(),
            answered.clone(),
        );
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match ask(addr) {
                    Ok(v) if !v.is_empty() => {
                        a.fetch_add(1, Ordering::Relaxed);
                        if seen.last() != Some(&v) {
                            seen.push(v);
                        }
                    }
                    Ok(_) => {
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        r.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        });
        Client {
            stop,
            refused,
            failed,
            answered,
            thread: Some(thread),
        }
    }

    /// Stops; (refused, failed, answered, the values seen in order).
    fn finish(mut self) -> (usize, usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.thread.take().unwrap().join().unwrap();
        (
            self.refused.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.answered.load(Ordering::Relaxed),
            seen,
        )
    }
}

fn wait_serving(addr: SocketAddr, value: &str) {
    wait_until(
        &format!("the service to serve {value}"),
        Duration::from_secs(15),
        || ask(addr).is_ok_and(|v| v == value),
    );
}

#[test]
fn restart_with_listen_refuses_no_connection_through_twenty_rotations() {
    let port = free_port();
    let p = project(&format!(
        "min_restart_interval = \"100ms\"\nlisten = [\"tcp://127.0.0.1:{port}\"]"
    ));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let run = Supervised::start(&p, &["--", "python3", "service.py"]);
    wait_serving(addr, "v0");
    let client = Client::start(addr);
    for n in 1..=20 {
        let value = format!("v{n}");
        rotate(&p, &run, &value);
        wait_serving(addr, &value);
    }
    let (refused, failed, answered, seen) = client.finish();
    assert_eq!(refused, 0, "refused connections during 20 restarts");
    assert_eq!(failed, 0, "requests without an answer");
    assert!(answered > 20, "only {answered} answers");
    assert_eq!(seen.last().map(String::as_str), Some("v20"), "{seen:?}");
    // Every child got the sockets for its own PID.
    for line in events(&p).iter().filter(|l| l.starts_with("start ")) {
        let pid = line.split(' ').nth(1).unwrap();
        assert!(line.contains(&format!("listen_pid={pid} fds=1")), "{line}");
    }
    run.stop_expecting(0);
}

#[test]
fn without_listen_the_same_restarts_refuse_connections() {
    // The control for the test above: the service binds its own port, so while one child is
    // gone and the next is starting, nobody listens. If this stops refusing, the test above
    // proves nothing.
    let port = free_port();
    let p = project("min_restart_interval = \"100ms\"");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let run = Supervised::start_env(
        &p,
        &["--", "python3", "service.py"],
        &[("BIND_PORT", &port.to_string())],
    );
    wait_serving(addr, "v0");
    let client = Client::start(addr);
    for n in 1..=3 {
        let value = format!("v{n}");
        rotate(&p, &run, &value);
        wait_serving(addr, &value);
    }
    let (refused, ..) = client.finish();
    assert!(refused > 0, "no connection was refused without `listen`");
    run.stop_expecting(0);
}

#[test]
fn overlap_with_notify_stops_the_old_child_only_after_the_new_one_says_ready() {
    let port = free_port();
    let p = project(&format!(
        "on_change = \"overlap\"\nmin_restart_interval = \"100ms\"\nlisten = [{{ addr = \"tcp://127.0.0.1:{port}\", name = \"web\" }}]\nready = {{ notify = true, timeout = \"3s\" }}"
    ));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The new child binds nothing and becomes ready a second after it starts.
    let run = Supervised::start_env(
        &p,
        &["--", "python3", "service.py"],
        &[("READY_DELAY", "1")],
    );
    wait_serving(addr, "v0");
    let client = Client::start(addr);
    let old = pid_of_start(&p, "v0").unwrap();

    rotate(&p, &run, "v1");
    wait_serving(addr, "v1");
    wait_until("the old child's end", Duration::from_secs(10), || {
        position(&p, &format!("exit {old}")).is_some()
    });
    let new = pid_of_start(&p, "v1").unwrap();
    assert!(
        events(&p)
            .iter()
            .all(|l| !l.starts_with("start ") || l.contains(" fds=1 names=web ")),
        "{:?}",
        events(&p)
    );
    let ready = position(&p, &format!("ready {new}")).unwrap();
    let term = position(&p, &format!("term {old}")).unwrap();
    assert!(
        ready < term,
        "the old child was stopped before the new one was ready: {:?}",
        events(&p)
    );

    // A child that never says READY=1: stopped after the timeout; the old one keeps serving.
    rotate(&p, &run, "never-1");
    wait_until(
        "the never-ready child's end",
        Duration::from_secs(15),
        || {
            pid_of_start(&p, "never-1")
                .is_some_and(|pid| position(&p, &format!("exit {pid}")).is_some())
        },
    );
    assert!(
        position(&p, &format!("term {new}")).is_none(),
        "the serving child was stopped"
    );
    assert_eq!(ask(addr).unwrap(), "v1");

    // READY=1 from the child's own child does not count.
    rotate(&p, &run, "grandchild-1");
    wait_until("the grandchild case's end", Duration::from_secs(15), || {
        pid_of_start(&p, "grandchild-1")
            .is_some_and(|pid| position(&p, &format!("exit {pid}")).is_some())
    });
    assert_eq!(ask(addr).unwrap(), "v1");

    let (refused, failed, _, seen) = client.finish();
    assert_eq!((refused, failed), (0, 0), "values seen: {seen:?}");
    // During the hand-over both children answer (they share the socket); a child that never
    // became ready took no connection.
    assert!(seen.iter().all(|v| v == "v0" || v == "v1"), "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("v1"), "{seen:?}");
    // The audit log is written by a thread of its own: its records may follow a moment later.
    let audit = || std::fs::read_to_string(p.path("audit.jsonl")).unwrap_or_default();
    wait_until("two overlap-failed records", Duration::from_secs(5), || {
        audit().matches("\"overlap-failed\"").count() == 2
    });
    assert_eq!(
        audit().matches("\"event\":\"overlap\"").count(),
        1,
        "{}",
        audit()
    );
    let stderr = run.stop_expecting(0);
    assert!(stderr.contains("not the child"), "{stderr}");
}

#[test]
fn secret_run_tells_its_own_service_manager_ready_reloading_and_stopping() {
    let p = project("min_restart_interval = \"100ms\"");
    let socket_path = p.path("notify.sock");
    let manager = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let port = free_port();
    let run = Supervised::start_env(
        &p,
        &["--", "python3", "service.py"],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("BIND_PORT", &port.to_string()),
        ],
    );
    let next = || {
        let mut buf = [0u8; 512];
        let n = manager
            .recv(&mut buf)
            .expect("a message for the service manager");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next();
    assert!(first.starts_with("READY=1"), "{first}");
    wait_until("the first child", Duration::from_secs(10), || {
        pid_of_start(&p, "v0").is_some()
    });
    rotate(&p, &run, "v1");
    let reloading = next();
    assert!(reloading.starts_with("RELOADING=1"), "{reloading}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let ready = next();
    assert!(ready.starts_with("READY=1"), "{ready}");
    wait_until("the second child", Duration::from_secs(10), || {
        pid_of_start(&p, "v1").is_some()
    });
    run.signal(Signal::SIGTERM);
    assert!(next().starts_with("STOPPING=1"));
    // The child never saw secret-run's NOTIFY_SOCKET: it would talk to systemd behind its back.
    let env = std::fs::read_to_string(p.path("events.log")).unwrap();
    assert!(!env.contains("notify.sock"), "{env}");
    run.wait(Duration::from_secs(10));
}

#[test]
fn sockets_passed_by_systemd_are_used_instead_of_binding() {
    let port = free_port();
    let p = project(&format!("listen = [\"tcp://127.0.0.1:{port}\"]"));
    // As systemd does: the socket at fd 3, LISTEN_FDS=1, LISTEN_PID = secret-run's PID.
    let launcher = format!(
        "import os, socket, sys\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('127.0.0.1', {port}))\ns.listen(16)\nos.dup2(s.fileno(), 3)\nos.set_inheritable(3, True)\nos.environ['LISTEN_FDS'] = '1'\nos.environ['LISTEN_PID'] = str(os.getpid())\nos.execv(sys.argv[1], sys.argv[1:])\n"
    );
    p.write("launcher.py", &launcher);
    let bin = crate::support::bin();
    let mut launched = std::process::Command::new("python3");
    launched
        .current_dir(p.dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["launcher.py", bin, "--", "python3", "service.py"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = launched.spawn().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let served = poll_until(Duration::from_secs(10), || {
        ask(addr).is_ok_and(|v| v == "v0")
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let status = out.status;
    assert!(
        served,
        "the service did not answer on the passed socket: {:?}\n{}",
        events(&p),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(status.code(), Some(0));
}

#[test]
fn gunicorn_serves_through_listen_and_is_rotated_under_load_with_nothing_refused() {
    // A real server that speaks both protocols: it takes its sockets from LISTEN_FDS (only
    // when LISTEN_PID is its own PID) and its arbiter says READY=1 once booted.
    let gunicorn = crate::kept::venv_bin("gunicorn");
    let port = free_port();
    let p = project(&format!(
        "on_change = \"overlap\"\nmin_restart_interval = \"100ms\"\nlisten = [{{ addr = \"tcp://127.0.0.1:{port}\", name = \"http\" }}]\nready = {{ notify = true, timeout = \"30s\" }}\nstop_timeout = \"10s\""
    ));
    p.write(
        "app.py",
        "import os\ndef app(environ, start_response):\n    body = os.environ['TOKEN'].encode()\n    start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', str(len(body)))])\n    return [body]\n",
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let run = Supervised::start(
        &p,
        &[
            "--",
            gunicorn.to_str().unwrap(),
            "--workers",
            "2",
            "--graceful-timeout",
            "5",
            "app:app",
        ],
    );
    wait_serving(addr, "v0");
    let client = Client::start(addr);
    for n in 1..=3 {
        let value = format!("v{n}");
        rotate(&p, &run, &value);
        wait_serving(addr, &value);
        // The hand-over is complete once the old arbiter is gone.
        wait_until("one overlap per rotation", Duration::from_secs(20), || {
            std::fs::read_to_string(p.path("audit.jsonl"))
                .unwrap_or_default()
                .matches("\"event\":\"overlap\"")
                .count()
                == n
        });
    }
    let (refused, failed, answered, seen) = client.finish();
    assert_eq!(refused, 0, "refused while gunicorn was rotated");
    assert_eq!(failed, 0, "requests without an answer");
    assert!(answered > 10, "{answered}");
    assert_eq!(seen.last().map(String::as_str), Some("v3"), "{seen:?}");
    run.stop_expecting(0);
}

#[test]
fn bad_listen_settings_are_refused_before_anything_is_fetched() {
    // A provider that leaves a mark: no mark, no fetch.
    let manifest = |run: &str| {
        format!(
            "[backends.p]\nkind = \"command\"\nargv = [\"./provider\"]\n[secrets]\nTOKEN = {{ backend = \"p\", path = \"t\" }}\n[run]\n{run}\n"
        )
    };
    let p = Project::with_manifest(&manifest("listen = [\"http://127.0.0.1:80\"]"));
    crate::support::script(&p, "provider", "touch fetched; echo value");
    p.run(&["--", "true"])
        .code(78)
        .stderr_has("secrets.toml:")
        .stderr_has("starts with tcp:// or unix:");
    p.write(
        "secrets.toml",
        &manifest("listen = [\"tcp://localhost:8080\"]"),
    );
    p.run(&["--", "true"])
        .code(78)
        .stderr_has("names are not resolved");

    // In use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    p.write(
        "secrets.toml",
        &manifest(&format!("listen = [\"tcp://127.0.0.1:{port}\"]")),
    );
    p.run(&["--", "true"]).code(71).stderr_has(&format!(
        "cannot listen on tcp://127.0.0.1:{port}: the address is in use"
    ));
    p.run(&["--exec", "--", "true"]).code(71);
    // A socket in a directory that does not exist.
    p.write(
        "secrets.toml",
        &manifest("listen = [\"unix:missing/dir/app.sock\"]"),
    );
    p.run(&["--", "true"])
        .code(71)
        .stderr_has("the socket's directory does not exist");
    assert!(!p.path("fetched").exists(), "a secret was fetched");

    // A probe that the old child would answer.
    p.write(
        "secrets.toml",
        &manifest(&format!(
            "on_change = \"overlap\"\nlisten = [\"tcp://0.0.0.0:{port}\"]\nready = {{ tcp = \"127.0.0.1:{port}\" }}"
        )),
    );
    p.run(&["--", "true"])
        .code(78)
        .stderr_has("the old child would answer the probe for the new one");
    // `notify` without `listen` is fine: the child binds its own port.
    p.write(
        "secrets.toml",
        &manifest("on_change = \"overlap\"\nready = { notify = true }"),
    );
    p.run(&["--", "true"]).code(0);
    // A file in the way of a unix socket is not removed.
    p.write("in-the-way", "data");
    p.write("secrets.toml", &manifest("listen = [\"unix:in-the-way\"]"));
    p.run(&["--", "true"])
        .code(71)
        .stderr_has("is not a socket");
    assert_eq!(
        std::fs::read_to_string(p.path("in-the-way")).unwrap(),
        "data"
    );
}

#[test]
fn a_unix_socket_gets_its_mode_and_is_removed_at_exit() {
    use std::os::unix::fs::PermissionsExt;
    let p = project("listen = [{ addr = \"unix:app.sock\", mode = \"0660\" }]");
    // A stale socket file from a run that was killed is replaced.
    drop(std::os::unix::net::UnixListener::bind(p.path("app.sock")).unwrap());
    let run = Supervised::start(&p, &["--", "python3", "service.py"]);
    wait_until("the service", Duration::from_secs(10), || {
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(p.path("app.sock")) else {
            return false;
        };
        let _ = s.write_all(b"GET\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.trim() == "v0"
    });
    let mode = std::fs::metadata(p.path("app.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    run.stop_expecting(0);
    assert!(
        !p.path("app.sock").exists(),
        "the socket file was left behind"
    );
}

#[test]
fn a_readiness_program_is_told_which_child_to_ask() {
    // Each child marks itself ready after half a second; the probe asks for the new child's
    // mark by its PID, which only SECRET_RUN_CHILD_PID gives.
    let p = project(
        "on_change = \"overlap\"\nmin_restart_interval = \"100ms\"\nready = { cmd = [\"sh\", \"-c\", \"test -e ready.$SECRET_RUN_CHILD_PID\"], timeout = \"10s\" }",
    );
    crate::support::script(
        &p,
        "child",
        "echo \"start $$ $TOKEN .\" >> events.log\nsleep 0.5\ntouch ready.$$\nexec sleep 100",
    );
    let run = Supervised::start(&p, &["--", "./child"]);
    wait_until("the first child", Duration::from_secs(10), || {
        pid_of_start(&p, "v0").is_some()
    });
    rotate(&p, &run, "v1");
    wait_until("the hand-over", Duration::from_secs(15), || {
        std::fs::read_to_string(p.path("audit.jsonl"))
            .unwrap_or_default()
            .contains("\"event\":\"overlap\"")
    });
    let audit = std::fs::read_to_string(p.path("audit.jsonl")).unwrap();
    assert!(!audit.contains("overlap-failed"), "{audit}");
    run.stop_expecting(143);
}
