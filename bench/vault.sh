#!/usr/bin/env bash
# 100 variables from 100 paths in a local OpenBao: how long secret-run takes to fetch them and
# start `true`, against 1 variable (the cost of each secret beyond the first), and against
# teller v2 on the same data when it installs (cargo install teller, needs apt protobuf-compiler).
# Also counts the connections secret-run opens for the 100 reads (kept alive, in parallel).
# Usage: bench/vault.sh [RUNS]      Results: bench/results/vault.json
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-50}
tools=bench/.tools
mkdir -p "$tools" bench/results

. bench/lib.sh
ensure_hyperfine
scripts/install-test-servers
bao=$PWD/.venv/bin/bao
bin=$(scripts/build-release)

ensure_teller

work=$(mktemp -d)
port=$(free_port)
HOME=$work "$bao" server -dev -dev-root-token-id=root -dev-listen-address="127.0.0.1:$port" \
    >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
export VAULT_ADDR="http://127.0.0.1:$port" VAULT_TOKEN=root
for _ in $(seq 100); do
    curl -fs "$VAULT_ADDR/v1/sys/health" >/dev/null 2>&1 && break
    sleep 0.1
done

# The data: bench/s001 .. bench/s100, one field `value` each.
python3 - "$VAULT_ADDR" <<'PY'
import json, os, sys, urllib.request
addr = sys.argv[1]
for i in range(1, 101):
    body = json.dumps({"data": {"value": f"bench-value-{i:03d}-" + os.urandom(8).hex()}}).encode()
    req = urllib.request.Request(f"{addr}/v1/secret/data/bench/s{i:03d}", body, method="POST",
                                 headers={"X-Vault-Token": "root", "Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
PY

manifest() {  # N -> a secret-run manifest for the first N secrets
    echo "[backends.vault]"
    echo "kind = \"vault\""
    echo "[secrets]"
    for i in $(seq -f %03g 1 "$1"); do echo "SECRET_$i = { backend = \"vault\", path = \"bench/s$i\" }"; done
}
teller_config() {  # N -> a teller v2 config for the same secrets
    echo "providers:"
    echo "  vault:"
    echo "    kind: hashicorp"
    echo "    maps:"
    for i in $(seq -f %03g 1 "$1"); do
        printf '      - id: s%s\n        path: secret/bench/s%s\n        keys:\n          value: SECRET_%s\n' "$i" "$i" "$i"
    done
}
manifest 1 > "$work/one.toml"
manifest 100 > "$work/hundred.toml"
true_bin=$(type -P true)

count=$("$bin" -f "$work/hundred.toml" --exec -- sh -c 'env | grep -c "^SECRET_"')
[ "$count" = 100 ] || { echo "expected 100 secrets in the child, got $count" >&2; exit 1; }
connections=$(RUST_LOG=debug "$bin" -f "$work/hundred.toml" --exec -- "$true_bin" 2>&1 | grep -c "connecting to" || true)

args=(-N --warmup 5 --runs "$runs" --style none
      -n "secret-run, 1 secret" "$bin -f $work/one.toml --exec -- $true_bin"
      -n "secret-run, 100 secrets" "$bin -f $work/hundred.toml --exec -- $true_bin"
      -n "secret-run check, 100 secrets" "$bin -f $work/hundred.toml check")
teller="$PWD/$tools/teller/bin/teller"
if [ -x "$teller" ]; then
    teller_config 1 > "$work/one.teller.yml"
    teller_config 100 > "$work/hundred.teller.yml"
    tcount=$("$teller" --config "$work/hundred.teller.yml" run -- /bin/sh -c 'env | grep -c "^SECRET_"' | tail -1)
    [ "$tcount" = 100 ] || { echo "teller gave the child $tcount secrets, not 100" >&2; exit 1; }
    "$teller" --config "$work/one.teller.yml" run -- "$true_bin" </dev/null \
        || { echo "teller run -- true exits $?" >&2; exit 1; }
    args+=(-n "teller v2, 1 secret" "$teller --config $work/one.teller.yml run -- $true_bin"
           -n "teller v2, 100 secrets" "$teller --config $work/hundred.teller.yml run -- $true_bin")
fi
hyperfine "${args[@]}" --export-json bench/results/vault.json

summarize bench/results/vault.json "secret-run: the 100 reads went over $connections connections"
