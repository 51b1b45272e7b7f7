#!/usr/bin/env bash
# The FROM scratch image and the compose file: build the image, start 3 containers, wait for a
# leader, kill one container, see the cluster elect again and take writes.
# Skips (exit 0, with the reason) when no Docker daemon answers.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
if ! docker info >/dev/null 2>&1; then
    echo "SKIP container test: no Docker daemon answers"
    exit 0
fi
"$root/packaging/container/build.sh"
target="$(rustc -vV | sed -n 's/^host: //p')"
cli="$root/target/$target/release/paddock"
work="$(mktemp -d /tmp/paddock-compose.XXXXXX)"
cp "$root/packaging/container/compose.yaml" "$work/"
# Docker's compose plugin, or Debian's docker-compose.
if docker compose version >/dev/null 2>&1; then
    compose() { docker compose -f "$work/compose.yaml" -p paddock-ci "$@"; }
else
    compose() { docker-compose -f "$work/compose.yaml" -p paddock-ci "$@"; }
fi
trap 'compose down -v >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
"$cli" certs init --dir "$work/certs" >/dev/null
for i in 1 2 3; do "$cli" certs node "n$i" --dir "$work/certs" --host "172.28.5.1$i" >/dev/null; done
"$cli" certs client admin --dir "$work/certs" --role admin >/dev/null
chmod -R a+rX "$work/certs"
compose up -d
export PADDOCK_ENDPOINT=172.28.5.11:7001,172.28.5.12:7001,172.28.5.13:7001
export PADDOCK_CERTS_DIR="$work/certs"
leader() { "$cli" -o json cluster status 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"] or "")' 2>/dev/null || true; }
wait_leader() {
    for _ in $(seq 1 150); do
        l="$(leader)"
        if [ -n "$l" ] && [ "$l" != "$1" ]; then echo "$l"; return 0; fi
        sleep 0.2
    done
    compose logs --tail 30 >&2
    return 1
}
first="$(wait_leader none)"
echo "leader: $first"
"$cli" kv put before-kill 1 >/dev/null
"$cli" vm create c1 --cpus 1 --memory 32MiB --ha --wait >/dev/null
compose kill "$first" >/dev/null 2>&1
echo "killed the container of $first"
second="$(wait_leader "$first")"
echo "new leader: $second"
"$cli" kv put after-kill 2 >/dev/null
test "$("$cli" kv get before-kill)" = 1
echo "container test passed: leader $first killed, $second leads, writes go on"
