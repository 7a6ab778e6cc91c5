#!/usr/bin/env bash
# A fleet's deploy on one machine: N secret-run --exec starts at once (default 200), 100 secrets
# each, against moto behind the throttling proxy (tests/fixtures/throttle_proxy.py, --replay)
# set to AWS's published per-account rates: BatchGetSecretValue 100/s, GetSecretValue 10,000/s,
# DescribeSecret 40,000/s. Run twice: with the quota-aware fallback (a throttled batch's secrets
# read with GetSecretValue, the default) and without it (`throttled_batch = "retry"`: the batch
# is called again after a jittered back-off). Reports, for each, the time until every replica
# started, the failed starts, and the calls per operation (made and throttled).
# DIVISOR divides every rate: the proxy serves ~1,000 calls/s on two cores, well under AWS's
# 10,000 GetSecretValue/s, so at the published rates the machine binds before the quota does;
# at a fifth of them the quotas bind, as on AWS.
# Usage: bench/fleet.sh [REPLICAS] [DIVISOR]      Results: bench/results/fleet[-DIVISOR].json
set -euo pipefail
cd "$(dirname "$0")/.."
replicas=${1:-200}
divisor=${2:-1}
out=bench/results/fleet.json
[ "$divisor" = 1 ] || out=bench/results/fleet-$divisor.json
mkdir -p bench/results
. bench/lib.sh
scripts/install-test-servers
bin=$(scripts/build-release)

work=$(mktemp -d)
port=$(free_port)
.venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
server=$!
proxy=
trap 'kill $server $proxy 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
: > "$work/empty"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 \
    AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE="$work/empty" AWS_SHARED_CREDENTIALS_FILE="$work/empty"
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1 && break; sleep 0.1; done
AWS_ENDPOINT_URL="http://127.0.0.1:$port" .venv/bin/python - <<'PY'
import boto3
sm = boto3.client("secretsmanager")
for i in range(1, 101):
    sm.create_secret(Name=f"fleet/s{i:03d}", SecretString=f"fleet-value-{i:03d}")
PY

# fleet MODE: one deploy with `throttled_batch = MODE`; prints its JSON summary.
fleet() {
    local mode=$1 proxy_port
    proxy_port=$(free_port)
    .venv/bin/python tests/fixtures/throttle_proxy.py "$proxy_port" "127.0.0.1:$port" \
        "$(python3 -c "import json; d = $divisor; print(json.dumps({'secretsmanager.' + op: [r / d, r / d] for op, r in [('BatchGetSecretValue', 100), ('GetSecretValue', 10000), ('DescribeSecret', 40000)]}))")" \
        --replay >"$work/proxy.$mode.log" 2>&1 &
    proxy=$!
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$proxy_port/_counts" >/dev/null 2>&1 && break; sleep 0.1; done
    {
        echo "[backends.aws]"
        echo "kind = \"aws-secrets-manager\""
        echo "throttled_batch = \"$mode\""
        echo "[secrets]"
        for i in $(seq -f %03g 1 100); do echo "S$i = { backend = \"aws\", path = \"fleet/s$i\" }"; done
    } > "$work/secrets.toml"
    local start pids=() failed=0 elapsed_ms
    start=$(date +%s%N)
    for i in $(seq "$replicas"); do
        AWS_ENDPOINT_URL="http://127.0.0.1:$proxy_port" \
            "$bin" -f "$work/secrets.toml" --timeout 120s --exec -- sh -c 'test "$S100" = fleet-value-100' \
            >/dev/null 2>"$work/err.$mode.$i" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
    elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
    curl -fsS "http://127.0.0.1:$proxy_port/_counts" >"$work/counts.$mode.json"
    kill "$proxy"; wait "$proxy" 2>/dev/null || true
    proxy=
    python3 - "$mode" "$failed" "$elapsed_ms" "$work/counts.$mode.json" <<'PY'
import json, sys
mode, failed, ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
calls = {op.split(".")[1]: {"ok": c["ok"], "throttled": c["throttled"]}
         for op, c in json.load(open(sys.argv[4])).items()}
print(json.dumps({"throttled_batch": mode, "failed_starts": failed, "all_started_ms": ms, "calls": calls}))
PY
}

with=$(fleet single-reads)
without=$(fleet retry)
python3 - "$replicas" "$divisor" "$with" "$without" <<'PY' | tee "$out"
import json, sys
runs = [json.loads(sys.argv[3]), json.loads(sys.argv[4])]
print(json.dumps({"replicas": int(sys.argv[1]), "secrets": 100, "rates_divided_by": int(sys.argv[2]), "runs": runs}, indent=2))
print("\n| throttled_batch | failed starts | all started | BatchGetSecretValue ok / throttled | GetSecretValue |", file=sys.stderr)
print("|---|---|---|---|---|", file=sys.stderr)
for r in runs:
    b = r["calls"].get("BatchGetSecretValue", {"ok": 0, "throttled": 0})
    g = r["calls"].get("GetSecretValue", {"ok": 0, "throttled": 0})
    print(f"| {r['throttled_batch']} | {r['failed_starts']} | {r['all_started_ms'] / 1000:.1f} s | {b['ok']} / {b['throttled']} | {g['ok']} |", file=sys.stderr)
PY
[ "$(python3 -c 'import json,sys; print(sum(r["failed_starts"] for r in json.load(open(sys.argv[1]))["runs"]))' "$out")" = 0 ]
