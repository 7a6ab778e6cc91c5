# Shared by the bench scripts: tools, ports, and the side-by-side summary. Sourced, not run.

ensure_hyperfine() {
    if ! command -v hyperfine >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null
    fi
    command -v hyperfine >/dev/null || { echo "hyperfine is needed (apt-get install hyperfine)" >&2; exit 1; }
}

# teller v2 into bench/.tools/teller, best effort (about 6 minutes the first time).
ensure_teller() {
    if [ ! -x bench/.tools/teller/bin/teller ]; then
        if ! command -v protoc >/dev/null && [ "$(id -u)" = 0 ]; then
            apt-get install -y -qq protobuf-compiler >/dev/null 2>&1 || true
        fi
        echo "installing teller v2 (about 6 minutes, once)" >&2
        cargo install --quiet --locked teller --root bench/.tools/teller >/dev/null 2>&1 \
            || echo "note: teller did not install; skipped" >&2
    fi
}

# A free loopback port whose successor is free too (OpenBao binds PORT+1).
free_port() {
    python3 -c 'import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", p + 1)); print(p); break
    except OSError: pass'
}

# summarize JSON NOTE: the table, the cost of each secret beyond the first, and the ratio to
# teller, from a hyperfine export whose commands are named "<tool>, 1 secret" / "<tool>, 100 secrets".
summarize() {
    python3 - "$1" "$2" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
ms = lambda name: r[name]["median"] * 1e3
print("\n| command | median | mean ± σ |\n|---|---|---|")
for name, x in r.items():
    print(f"| {name} | {x['median']*1e3:.2f} ms | {x['mean']*1e3:.2f} ± {x['stddev']*1e3:.2f} ms |")
for tool in ("secret-run", "teller v2"):
    if f"{tool}, 100 secrets" in r:
        per = (ms(f"{tool}, 100 secrets") - ms(f"{tool}, 1 secret")) / 99 * 1e3
        print(f"{tool}: each secret beyond the first costs {per:.0f} µs")
print(sys.argv[2])
if "teller v2, 100 secrets" in r:
    print(f"100 secrets: secret-run is {ms('teller v2, 100 secrets') / ms('secret-run, 100 secrets'):.1f}x faster than teller v2 "
          f"(1 secret: {ms('teller v2, 1 secret') / ms('secret-run, 1 secret'):.1f}x)")
PY
}
