#!/usr/bin/env bash
# A fleet's deploy on one machine: N secret-run --exec starts at once (default 60), 100 secrets
# each, against moto behind the throttling proxy (tests/fixtures/throttle_proxy.py) set to AWS's
# published per-account rates: BatchGetSecretValue 100/s, GetSecretValue 10,000/s,
# DescribeSecret 40,000/s. Reports the time until every replica started, the failed starts,
# and the calls per operation (made and throttled).
# Usage: bench/fleet.sh [REPLICAS]      Results: bench/results/fleet.json
set -euo pipefail
cd "$(dirname "$0")/.."
replicas=${1:-60}
mkdir -p bench/results
. bench/lib.sh
scripts/install-test-servers
bin=$(scripts/build-release)

work=$(mktemp -d)
port=$(free_port)
proxy_port=$(free_port)
.venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
server=$!
.venv/bin/python tests/fixtures/throttle_proxy.py "$proxy_port" "127.0.0.1:$port" \
    '{"secretsmanager.BatchGetSecretValue": [100, 100], "secretsmanager.GetSecretValue": [10000, 10000], "secretsmanager.DescribeSecret": [40000, 40000]}' \
    >"$work/proxy.log" 2>&1 &
proxy=$!
trap 'kill $server $proxy 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
: > "$work/empty"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 \
    AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE="$work/empty" AWS_SHARED_CREDENTIALS_FILE="$work/empty"
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1 \
        && curl -fs "http://127.0.0.1:$proxy_port/_counts" >/dev/null 2>&1 && break
    sleep 0.1
done
AWS_ENDPOINT_URL="http://127.0.0.1:$port" .venv/bin/python - <<'PY'
import boto3
sm = boto3.client("secretsmanager")
for i in range(1, 101):
    sm.create_secret(Name=f"fleet/s{i:03d}", SecretString=f"fleet-value-{i:03d}")
PY
{
    echo "[backends.aws]"
    echo "kind = \"aws-secrets-manager\""
    echo "[secrets]"
    for i in $(seq -f %03g 1 100); do echo "S$i = { backend = \"aws\", path = \"fleet/s$i\" }"; done
} > "$work/secrets.toml"

export AWS_ENDPOINT_URL="http://127.0.0.1:$proxy_port"
start=$(date +%s%N)
pids=()
for i in $(seq "$replicas"); do
    "$bin" -f "$work/secrets.toml" --timeout 120s --exec -- sh -c 'test "$S100" = fleet-value-100' \
        >/dev/null 2>"$work/err.$i" &
    pids+=($!)
done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
counts=$(curl -fsS "http://127.0.0.1:$proxy_port/_counts")
python3 - "$replicas" "$failed" "$elapsed_ms" "$counts" <<'PY' | tee bench/results/fleet.json
import json, sys
replicas, failed, ms, counts = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
print(json.dumps({"replicas": replicas, "secrets": 100, "failed_starts": failed,
                  "all_started_ms": ms, "calls": counts}, indent=2))
PY
[ "$failed" = 0 ]
