#!/usr/bin/env bash
# Every fuzz target (fuzz/fuzz_targets) for SECONDS each, on stable Rust with cargo-fuzz and no
# sanitizer, starting from its committed corpus (fuzz/corpus/TARGET, read only: new inputs go
# to a scratch directory). A crash fails the run and leaves its input in
# fuzz/artifacts/TARGET/; add it to fuzz/corpus/TARGET/ with the fix, so every later run
# replays it first.
# Usage: tests/fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "SKIP fuzzing: cargo-fuzz is not installed (cargo install cargo-fuzz --version '^0.13')"
    exit 0
fi
cargo fuzz build -s none --fuzz-dir fuzz
scratch="$(mktemp -d /tmp/paddock-fuzz.XXXXXX)"
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list --fuzz-dir fuzz); do
    mkdir -p "$scratch/$target"
    echo "-- fuzz $target for ${seconds}s"
    if ! cargo fuzz run -s none --fuzz-dir fuzz "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
        >"$scratch/$target.log" 2>&1; then
        tail -40 "$scratch/$target.log" >&2
        echo "fuzz target $target failed; its input is under fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added|stat::peak_rss_mb)' "$scratch/$target.log"
done
echo "fuzzing passed: no crash in any target"
