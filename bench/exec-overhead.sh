#!/usr/bin/env bash
# What does wrapping a command in secret-run cost? 20 secrets from a .env, the command `true`:
# secret-run --exec and supervise against bare `true`, and against the dotenvy CLI and dotenvx
# (installed into bench/.tools when the registries allow; skipped with a note otherwise).
# Needs hyperfine (installed from apt when missing and running as root).
# Usage: bench/exec-overhead.sh [RUNS]    Results: bench/results/exec-overhead.{json,md}
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1000}
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
true_bin=$(command -v true)

args=(-N --warmup 100 --runs "$runs" --export-json bench/results/exec-overhead.json
      --export-markdown bench/results/exec-overhead.md
      -n "true (bare)" "$true_bin"
      -n "secret-run --exec" "$bin -f $work/secrets.toml --exec -- $true_bin"
      -n "secret-run (supervise)" "$bin -f $work/secrets.toml -- $true_bin")
[ -x "$tools/dotenvy/bin/dotenvy" ] && args+=(-n "dotenvy CLI" "$PWD/$tools/dotenvy/bin/dotenvy -f $work/.env $true_bin")

# Prove the wrapped command really gets the 20 values before timing it.
count=$("$bin" -f "$work/secrets.toml" --exec -- sh -c 'env | grep -c "^SECRET_"')
[ "$count" = 20 ] || { echo "expected 20 secrets in the child, got $count" >&2; exit 1; }

hyperfine "${args[@]}"
if [ -x "$tools/npm/node_modules/.bin/dotenvx" ]; then
    # About half a second a run (Node start-up): fewer runs, its own file.
    hyperfine -N --warmup 3 --runs 30 --export-json bench/results/exec-overhead-dotenvx.json \
        -n "dotenvx run" "$PWD/$tools/npm/node_modules/.bin/dotenvx run -q -f $work/.env -- $true_bin"
fi

python3 - <<'PY'
import json
import os
r = json.load(open("bench/results/exec-overhead.json"))["results"]
if os.path.exists("bench/results/exec-overhead-dotenvx.json"):
    r += json.load(open("bench/results/exec-overhead-dotenvx.json"))["results"]
base = next(x for x in r if x["command"] == "true (bare)")
print("\n| command | median | mean ± σ | overhead (median) |\n|---|---|---|---|")
for x in r:
    print(f"| {x['command']} | {x['median']*1e3:.3f} ms | {x['mean']*1e3:.3f} ± {x['stddev']*1e3:.3f} ms | {(x['median']-base['median'])*1e3:+.3f} ms |")
PY
