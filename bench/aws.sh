#!/usr/bin/env bash
# 100 secrets in a local moto (AWS Secrets Manager): secret-run's wall time and API-call count
# for 1 and 100 secrets, against teller v2 on the same data when it installs.
# Usage: bench/aws.sh [RUNS]      Results: bench/results/aws.json
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
mkdir -p bench/results
. bench/lib.sh
ensure_hyperfine
scripts/install-test-servers
bin=$(scripts/build-release)
ensure_teller

work=$(mktemp -d)
port=$(free_port)
.venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
: > "$work/empty"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 \
    AWS_EC2_METADATA_DISABLED=true AWS_ENDPOINT_URL="http://127.0.0.1:$port" \
    AWS_CONFIG_FILE="$work/empty" AWS_SHARED_CREDENTIALS_FILE="$work/empty"
for _ in $(seq 100); do
    curl -fs "$AWS_ENDPOINT_URL/moto-api/" >/dev/null 2>&1 && break
    sleep 0.1
done

# The data: bench/s001 .. bench/s100, each a JSON object {"value": ...} (teller wants JSON).
.venv/bin/python - <<'PY'
import boto3, json, os
sm = boto3.client("secretsmanager")
for i in range(1, 101):
    sm.create_secret(Name=f"bench/s{i:03d}", SecretString=json.dumps({"value": f"bench-value-{i:03d}-" + os.urandom(8).hex()}))
PY

manifest() {
    echo "[backends.aws]"
    echo "kind = \"aws-secrets-manager\""
    echo "[secrets]"
    for i in $(seq -f %03g 1 "$1"); do echo "SECRET_$i = { backend = \"aws\", path = \"bench/s$i\", key = \"value\" }"; done
}
teller_config() {
    printf 'providers:\n  aws:\n    kind: aws_secretsmanager\n    options:\n      region: us-east-1\n      endpoint_url: %s\n    maps:\n' "$AWS_ENDPOINT_URL"
    for i in $(seq -f %03g 1 "$1"); do
        printf '      - id: s%s\n        path: bench/s%s\n        keys:\n          value: SECRET_%s\n' "$i" "$i" "$i"
    done
}
manifest 1 > "$work/one.toml"
manifest 100 > "$work/hundred.toml"
true_bin=$(type -P true)

count=$("$bin" -f "$work/hundred.toml" --exec -- sh -c 'env | grep -c "^SECRET_"')
[ "$count" = 100 ] || { echo "expected 100 secrets in the child, got $count" >&2; exit 1; }
calls=$("$bin" -vv -f "$work/hundred.toml" --exec -- "$true_bin" 2>&1 | grep -c "AWS API call" || true)

args=(-N --warmup 3 --runs "$runs" --style none
      -n "secret-run, 1 secret" "$bin -f $work/one.toml --exec -- $true_bin"
      -n "secret-run, 100 secrets" "$bin -f $work/hundred.toml --exec -- $true_bin")
teller="$PWD/bench/.tools/teller/bin/teller"
if [ -x "$teller" ]; then
    teller_config 1 > "$work/one.teller.yml"
    teller_config 100 > "$work/hundred.teller.yml"
    tcount=$("$teller" --config "$work/hundred.teller.yml" run -- /bin/sh -c 'env | grep -c "^SECRET_"' | tail -1)
    [ "$tcount" = 100 ] || { echo "teller gave the child $tcount secrets, not 100" >&2; exit 1; }
    args+=(-n "teller v2, 1 secret" "$teller --config $work/one.teller.yml run -- $true_bin"
           -n "teller v2, 100 secrets" "$teller --config $work/hundred.teller.yml run -- $true_bin")
fi
hyperfine "${args[@]}" --export-json bench/results/aws.json
summarize bench/results/aws.json "secret-run: $calls Secrets Manager API calls for 100 secrets (goal: at most 5)"
