#!/usr/bin/env bash
# Builds the image paddock:dev: static (glibc, +crt-static) release binaries of paddockd,
# paddock-memvm and paddock, copied into an image FROM scratch.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="$(rustc -vV | sed -n 's/^host: //p')"
cd "$root"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target "$target" \
    -p paddock-node -p paddock-cli --bin paddockd --bin paddock-memvm --bin paddock
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$here/Dockerfile" "$context/"
for bin in paddockd paddock-memvm paddock; do
    cp "target/$target/release/$bin" "$context/"
done
docker build -q -t paddock:dev "$context"
echo "static binaries in target/$target/release; image paddock:dev built"
