#!/usr/bin/env bash
# The supervisor's cost while a child runs, and how fast a rotation reaches a new child:
# - resident memory (VmRSS) of secret-run supervising `sleep`, with 20 secrets from files;
# - the time from SIGHUP to the new child running with the new value (file backend, on_change =
#   restart; the child is `sleep`, which stops at once on SIGTERM, so its own stop time is ~0);
# - connections refused during 20 restarts of a service that starts in 0.3 s, with a client
#   every 10 ms, without and with `[run] listen`, and the hand-over time.
# BENCH_BIN=/path/to/secret-run measures another build (a change against the one before it).
# Usage: bench/rotation.sh [ROUNDS]      Results: bench/results/rotation.json
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-30}
mkdir -p bench/results
bin=${BENCH_BIN:-$(scripts/build-release)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/run"
{
    echo '[backends.files]'
    echo 'kind = "file"'
    echo 'dir = "run"'
    echo '[secrets]'
    for i in $(seq -w 1 20); do echo "SECRET_$i = { backend = \"files\", path = \"s$i\" }"; done
    echo '[run]'
    echo 'min_restart_interval = "1ms"'
} > "$work/secrets.toml"
for i in $(seq -w 1 20); do echo "value-$i-0" > "$work/run/s$i"; done
cat > "$work/child" <<'SH'
#!/bin/sh
echo "$SECRET_01" > started.tmp && mv started.tmp started
exec sleep 1000
SH
chmod +x "$work/child"

python3 - "$bin" "$work" "$rounds" "$PWD/bench/results/rotation.json" <<'PY'
import json, os, signal, statistics, subprocess, sys, time
bin, work, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.chdir(work)
def read(path):
    try:
        return open(path).read().strip()
    except FileNotFoundError:
        return None
def wait_for(value, limit=5.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if read("started") == value:
            return time.monotonic()
        time.sleep(0.0002)
    raise SystemExit(f"the child never started with {value}")
# The binary's pages out of the page cache first, as on a host that reads it from disk: a binary
# the linker has just written sits there in large folios, and a fault maps a whole one.
subprocess.run(["sync"])
fd = os.open(bin, os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
os.close(fd)
p = subprocess.Popen([bin, "-f", "secrets.toml", "--", "./child"], stderr=subprocess.DEVNULL)
wait_for("value-01-0")
time.sleep(0.3)
rss = [int(l.split()[1]) for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS:")][0]
latencies = []
for n in range(1, rounds + 1):
    with open("run/s01.tmp", "w") as f:
        f.write(f"value-01-{n}\n")
    os.rename("run/s01.tmp", "run/s01")
    t0 = time.monotonic()
    os.kill(p.pid, signal.SIGHUP)
    latencies.append((wait_for(f"value-01-{n}") - t0) * 1e3)
    time.sleep(0.02)
rss_after = [int(l.split()[1]) for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS:")][0]
p.send_signal(signal.SIGTERM)
p.wait(5)
result = {"vmrss_kib": rss, "vmrss_after_reloads_kib": rss_after, "reload_ms": latencies}
json.dump(result, open(sys.argv[4], "w"))
print(f"VmRSS of the supervisor: {rss / 1024:.1f} MiB at start, {rss_after / 1024:.1f} MiB after {rounds} reloads (goal: <= 6 MiB)")
print(f"SIGHUP -> new child running with the new value: median {statistics.median(latencies):.1f} ms, "
      f"min {min(latencies):.1f}, max {max(latencies):.1f} over {rounds} reloads (goal: <= 50 ms)")
PY

# Refused connections during a hand-over: a service that takes 0.3 s to start, a client that
# connects every 10 ms, 20 rotations with on_change = "restart", without and with `listen`.
# Hand-over time: from SIGHUP to the first answer with the new value.
python3 - "$bin" "$work" "$PWD/bench/results/rotation-refused.json" <<'PY'
import json, os, signal, socket, statistics, subprocess, sys, threading, time
bin, work, out = sys.argv[1], sys.argv[2], sys.argv[3]
os.chdir(work)
open("service.py", "w").write('''
import os, signal, socket, time
stop = False
def term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, term)
time.sleep(0.3)
if os.environ.get("LISTEN_PID") == str(os.getpid()):
    s = socket.socket(fileno=3)
else:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(os.environ["PORT"])))
    s.listen(64)
s.settimeout(0.05)
while not stop:
    try:
        c, _ = s.accept()
    except (socket.timeout, InterruptedError):
        continue
    with c:
        c.recv(64)
        c.sendall(os.environ["TOKEN"].encode())
''')
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
def ask(port):
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    c.sendall(b"GET\n")
    data = c.recv(64).decode()
    c.close()
    return data
results = {}
for mode in ["without listen", "with listen"]:
    port = free_port()
    listen = f'listen = ["tcp://127.0.0.1:{port}"]' if mode == "with listen" else ""
    open("handover.toml", "w").write(f'[backends.files]\nkind = "file"\ndir = "run"\n[secrets]\nTOKEN = {{ backend = "files", path = "token" }}\n[run]\nmin_restart_interval = "100ms"\n{listen}\n')
    open("run/token", "w").write("t-0\n")
    env = dict(os.environ, PORT=str(port))
    p = subprocess.Popen([bin, "-f", "handover.toml", "--", sys.executable, "service.py"], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            if ask(port) == "t-0":
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the service never answered")
        time.sleep(0.01)
    counts = {"refused": 0, "answered": 0, "failed": 0}
    done = threading.Event()
    def client():
        while not done.is_set():
            try:
                ask(port)
                counts["answered"] += 1
            except ConnectionRefusedError:
                counts["refused"] += 1
            except OSError:
                counts["failed"] += 1
            time.sleep(0.01)
    t = threading.Thread(target=client); t.start()
    handovers = []
    for n in range(1, 21):
        with open("run/token.tmp", "w") as f:
            f.write(f"t-{n}\n")
        os.rename("run/token.tmp", "run/token")
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGHUP)
        while True:
            try:
                if ask(port) == f"t-{n}":
                    break
            except OSError:
                pass
            time.sleep(0.005)
        handovers.append((time.monotonic() - t0) * 1e3)
    done.set(); t.join()
    p.send_signal(signal.SIGTERM); p.wait(10)
    results[mode] = dict(counts, handover_ms=handovers)
    print(f"{mode}: {counts['refused']} refused, {counts['failed']} failed, {counts['answered']} answered; "
          f"hand-over median {statistics.median(handovers):.0f} ms (min {min(handovers):.0f}, max {max(handovers):.0f}) over 20 restarts")
json.dump(results, open(out, "w"))
PY
