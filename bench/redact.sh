#!/usr/bin/env bash
# The cost of redaction (`--redact`), and of `scan`:
# - throughput: GIB GiB of text through `secret-run --redact=always -- cat`, with 100 values of
#   16–64 bytes, against the same stream through a pipe and `cat` (goal: at least 70% of
#   that throughput);
# - latency: a line written by the child, to the moment it can be read from secret-run's stdout
#   (goal: median within 1 ms);
# - `scan` over a tree of FILES files (10 KiB each) against `rg -F -f values` on the same tree
#   (goal: within 2x). ripgrep is installed from apt when missing and running as root.
# Usage: bench/redact.sh [GIB] [FILES]      Results: bench/results/redact.json
set -euo pipefail
cd "$(dirname "$0")/.."
gib=${1:-1}
files=${2:-50000}
mkdir -p bench/results
bin=${BENCH_BIN:-$(scripts/build-release)}
if ! command -v rg >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq ripgrep >/dev/null 2>&1 || true
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$bin" "$work" "$gib" "$files" "$PWD/bench/results/redact.json" <<'PY'
import json, os, random, shutil, statistics, string, subprocess, sys, time
bin, work, gib, nfiles, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
os.chdir(work)
rng = random.Random(7)
alphabet = string.ascii_letters + string.digits
values = ["".join(rng.choice(alphabet) for _ in range(rng.randint(16, 64))) for _ in range(100)]
with open("secrets.toml", "w") as f:
    f.write("[secrets]\n" + "".join(f"V{i:03} = \"v{i:03}\"\n" for i in range(100)))
with open(".env", "w") as f:
    f.write("".join(f"V{i:03}={v}\n" for i, v in enumerate(values)))
# 64 MiB of log-like text with a value every ~4 KiB, repeated to GIB GiB.
chunk = []
size = 0
while size < 64 << 20:
    line = " ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(3, 12))) for _ in range(12))
    if rng.random() < 0.02:
        line += " token=" + rng.choice(values)
    line += "\n"
    chunk.append(line)
    size += len(line)
open("data", "w").write("".join(chunk))
copies = max(1, int(gib * 16))
args = ["data"] * copies
total = os.path.getsize("data") * copies
def timed(cmd):
    best = None
    for _ in range(3):
        t0 = time.monotonic()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
        t = time.monotonic() - t0
        best = t if best is None else min(best, t)
    return best
# The same stream through a pipe and `cat`: what any wrapper of the output costs at least.
cat = timed(["sh", "-c", 'cat "$@" | cat', "sh", *args])
red = timed([bin, "--redact=always", "--", "cat", *args])
# Latency: the child stamps each line with CLOCK_MONOTONIC; the reader compares on arrival.
child = "import time, sys\nfor i in range(300):\n    sys.stdout.write(f'{time.monotonic_ns()}\\n'); sys.stdout.flush(); time.sleep(0.005)\n"
open("stamp.py", "w").write(child)
p = subprocess.Popen([bin, "--redact=always", "--", sys.executable, "stamp.py"], stdout=subprocess.PIPE)
lat = []
for line in p.stdout:
    lat.append((time.monotonic_ns() - int(line)) / 1e6)
p.wait()
# scan against ripgrep on a tree of files.
tree = "tree"
os.mkdir(tree)
text = open("data").read(10 * 1024 * nfiles // 8 + 1)
for i in range(nfiles):
    d = os.path.join(tree, f"d{i // 1000}")
    os.makedirs(d, exist_ok=True)
    start = (i * 10240) % max(1, len(text) - 10240)
    open(os.path.join(d, f"f{i}.txt"), "w").write(text[start:start + 10240])
open("values.txt", "w").write("\n".join(values) + "\n")
shutil.copy("secrets.toml", tree); shutil.copy(".env", tree)
def timed_scan(cmd):
    best = None
    for _ in range(3):
        t0 = time.monotonic()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tree)
        t = time.monotonic() - t0
        best = t if best is None else min(best, t)
    return best
scan = timed_scan([bin, "scan", "."])
rg = timed_scan(["rg", "-F", "-f", "../values.txt", "."]) if shutil.which("rg") else None
result = {"bytes": total, "cat_s": cat, "redact_s": red, "latency_ms": lat, "scan_s": scan, "rg_s": rg, "files": nfiles}
json.dump(result, open(out, "w"))
print(f"throughput: cat {total / cat / 1e6:.0f} MB/s, --redact=always {total / red / 1e6:.0f} MB/s = {cat / red * 100:.0f}% of cat (goal >= 70%)")
print(f"latency: median {statistics.median(lat):.2f} ms, p99 {sorted(lat)[int(len(lat) * 0.99)]:.2f} ms over {len(lat)} lines (goal: median <= 1 ms)")
if rg:
    print(f"scan of {nfiles} files: {scan:.2f} s, rg -F -f: {rg:.2f} s = {scan / rg:.1f}x (goal <= 2x)")
else:
    print(f"scan of {nfiles} files: {scan:.2f} s (rg not installed)")
PY
