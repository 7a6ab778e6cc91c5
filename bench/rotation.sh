#!/usr/bin/env bash
# The supervisor's cost while a child runs, and how fast a rotation reaches a new child:
# - resident memory (VmRSS) of secret-run supervising `sleep`, with 20 secrets from files;
# - the time from SIGHUP to the new child running with the new value (file backend, on_change =
#   restart; the child is `sleep`, which stops at once on SIGTERM, so its own stop time is ~0).
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
