#!/usr/bin/env bash
# The HTTPS API checked against its own OpenAPI document by schemathesis, on a fresh local
# 3-node cluster: every operation, no 5xx to anything, every response matching the schema.
# Usage: tests/api/run.sh [target/debug] [max examples per operation]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$(cd "${1:-$root/target/debug}" && pwd)"
examples="${2:-40}"
if ! command -v schemathesis >/dev/null; then
    echo "SKIP schemathesis: not installed (pip install schemathesis)"
    exit 0
fi
dir="$(mktemp -d /tmp/paddock-schemathesis.XXXXXX)"
port=7901
trap '"$bin/paddock" dev down --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
"$bin/paddock" dev up --dir "$dir" --base-port "$port" --detach >/dev/null
api="https://127.0.0.1:$((port + 200))"
schemathesis --version
token="$(cat "$dir/token")"
cd "$here"
run() {
    schemathesis run "$api/api/v1/openapi.json" \
        --url "$api/api/v1" \
        --tls-verify "$dir/certs/ca.crt" \
        -H "Authorization: Bearer $token" \
        --max-examples "$examples" \
        --checks all \
        --request-retries 2 \
        --seed 1 "$@"
}
# Revoking tokens last, on its own: the run revokes any token it can list, its own too.
status=0
run --exclude-path '/tokens/{name}' 2>&1 | tee "$dir/all-but-revoke.log" || status=1
run --include-path '/tokens/{name}' 2>&1 | tee "$dir/revoke.log" || status=1
grep -h "generated," "$dir"/*.log || true
# A retried network error must not hide a handler that panicked and dropped its connection:
# the nodes' logs (their stderr too) must hold no panic.
if grep -n "panicked" "$dir"/n*.log; then
    echo "a node panicked while schemathesis ran (above)" >&2
    status=1
fi
if [ "$status" -ne 0 ]; then
    for log in "$dir"/n*.log; do echo "== $log (last lines)"; tail -20 "$log"; done >&2
fi
exit $status
