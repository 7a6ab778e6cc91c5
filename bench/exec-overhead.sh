#!/usr/bin/env bash
# What does wrapping a command in secret-run cost? 20 secrets from a .env, the command `true`:
# secret-run --exec and supervise against bare `true`, and against the dotenvy CLI and dotenvx
# (installed into bench/.tools when the registries allow; skipped with a note otherwise).
# Needs hyperfine (installed from apt when missing and running as root).
# The machine drifts over a minute (page-fault cost in a VM), so the commands are timed in
# ROUNDS interleaved rounds of RUNS runs each, and each round's overhead is taken against the
# bare `true` of the same round; the report gives the median of those and their range.
# With BENCH_NO_PIE=1 and BENCH_LEAN=1, the builds of `scripts/build-release --no-pie` and
# `--lean` are timed too. BENCH_BASELINE=/path/to/secret-run times another build in the same
# rounds (exec and supervise): a change against the build before it.
# Usage: bench/exec-overhead.sh [RUNS] [ROUNDS]    Results: bench/results/exec-overhead*.json
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-300}
rounds=${2:-10}
tools=bench/.tools
mkdir -p "$tools" bench/results

if ! command -v hyperfine >/dev/null; then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; fi
fi
command -v hyperfine >/dev/null || { echo "hyperfine is needed (apt-get install hyperfine)" >&2; exit 1; }

bin=$(scripts/build-release)

# Peers, best effort.
if [ ! -x "$tools/dotenvy/bin/dotenvy" ]; then
    cargo install --quiet --locked dotenvy --features cli --root "$tools/dotenvy" >/dev/null 2>&1 \
        || echo "note: the dotenvy CLI did not install; skipped" >&2
fi
if [ ! -x "$tools/npm/node_modules/.bin/dotenvx" ] && command -v npm >/dev/null; then
    npm install --silent --prefix "$tools/npm" @dotenvx/dotenvx >/dev/null 2>&1 \
        || echo "note: dotenvx did not install; skipped" >&2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{
    echo "[secrets]"
    for i in $(seq -w 1 20); do echo "SECRET_$i = \"secret/$i\""; done
} > "$work/secrets.toml"
for i in $(seq -w 1 20); do echo "SECRET_$i=value-$i-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"; done > "$work/.env"
true_bin=$(type -P true)

args=(-N --warmup 50 --runs "$runs" --style none
      -n "true (bare)" "$true_bin"
      -n "secret-run --exec" "$bin -f $work/secrets.toml --exec -- $true_bin"
      -n "secret-run (supervise)" "$bin -f $work/secrets.toml -- $true_bin")
if [ "${BENCH_NO_PIE:-}" = 1 ]; then
    nopie=$(scripts/build-release --no-pie)
    args+=(-n "secret-run --exec (no-PIE build)" "$nopie -f $work/secrets.toml --exec -- $true_bin")
fi
if [ "${BENCH_LEAN:-}" = 1 ]; then
    lean=$(scripts/build-release --lean)
    args+=(-n "secret-run --exec (lean build)" "$lean -f $work/secrets.toml --exec -- $true_bin")
fi
if [ -n "${BENCH_BASELINE:-}" ]; then
    args+=(-n "baseline --exec" "$BENCH_BASELINE -f $work/secrets.toml --exec -- $true_bin"
           -n "baseline (supervise)" "$BENCH_BASELINE -f $work/secrets.toml -- $true_bin")
fi
[ -x "$tools/dotenvy/bin/dotenvy" ] && args+=(-n "dotenvy CLI" "$PWD/$tools/dotenvy/bin/dotenvy -f $work/.env $true_bin")

# Prove the wrapped command really gets the 20 values before timing it.
count=$("$bin" -f "$work/secrets.toml" --exec -- sh -c 'env | grep -c "^SECRET_"')
[ "$count" = 20 ] || { echo "expected 20 secrets in the child, got $count" >&2; exit 1; }

rm -f bench/results/exec-overhead-round-*.json
for round in $(seq 1 "$rounds"); do
    echo "round $round of $rounds ($runs runs per command)" >&2
    hyperfine "${args[@]}" --export-json "bench/results/exec-overhead-round-$round.json" >/dev/null
done
if [ -x "$tools/npm/node_modules/.bin/dotenvx" ]; then
    # About half a second a run (Node start-up): fewer runs, its own file.
    hyperfine -N --warmup 3 --runs 30 --export-json bench/results/exec-overhead-dotenvx.json \
        -n "dotenvx run" "$PWD/$tools/npm/node_modules/.bin/dotenvx run -q -f $work/.env -- $true_bin"
fi

python3 - <<'PY'
import glob, json, os, statistics
rounds = [json.load(open(f))["results"] for f in sorted(glob.glob("bench/results/exec-overhead-round-*.json"))]
names = [x["command"] for x in rounds[0]]
print(f"\n{len(rounds)} interleaved rounds of {len(rounds[0][0]['times'])} runs per command\n")
print("| command | median of round medians | overhead: median (min … max over rounds) |\n|---|---|---|")
for i, name in enumerate(names):
    medians = [r[i]["median"] for r in rounds]
    over = [r[i]["median"] - r[0]["median"] for r in rounds]
    print(f"| {name} | {statistics.median(medians)*1e3:.3f} ms | {statistics.median(over)*1e3:+.3f} ms ({min(over)*1e3:+.3f} … {max(over)*1e3:+.3f}) |")
if os.path.exists("bench/results/exec-overhead-dotenvx.json"):
    x = json.load(open("bench/results/exec-overhead-dotenvx.json"))["results"][0]
    base = statistics.median(r[0]["median"] for r in rounds)
    print(f"| {x['command']} | {x['median']*1e3:.3f} ms | {(x['median']-base)*1e3:+.3f} ms (one run of 30) |")
PY
