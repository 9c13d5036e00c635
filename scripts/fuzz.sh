#!/usr/bin/env bash
# fuzz.sh — runs the cargo-fuzz targets in fuzz/ (record decode, the JSON mapping, client messages, the /ws
# handshake, tokens) for a bounded time each, from the committed seeds (fuzz/seeds, or fuzz/seeds-<target>),
# and prints how many inputs each ran. Fails on any crash (the input is kept in fuzz/artifacts/<target>/).
#
# Usage: scripts/fuzz.sh [seconds per target, default 20] [target ...]
#   short run (CI):   scripts/fuzz.sh 20
#   longer run:       scripts/fuzz.sh 1800            # 30 min per target; the corpus grows in fuzz/corpus/
# Needs: a nightly toolchain (rustup) and cargo-fuzz; both are installed here if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decode json client handshake token)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "[fuzz] installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "[fuzz] installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

status=0
for t in "${targets[@]}"; do
    corpus="fuzz/corpus/$t"
    mkdir -p "$corpus"
    log="$(mktemp)"
    seeds=fuzz/seeds
    [ -d "fuzz/seeds-$t" ] && seeds="fuzz/seeds-$t"
    echo "[fuzz] $t: ${secs}s from $seeds"
    # -rss_limit_mb bounds memory per input: the decoder must stay well under it for any input.
    if ! cargo +nightly fuzz run "$t" "$corpus" "$seeds" -- \
        -max_total_time="$secs" -rss_limit_mb=1024 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "[fuzz] $t: FAILED (crash input in fuzz/artifacts/$t/)"
        status=1
    else
        runs="$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')"
        echo "[fuzz] $t: ${runs:-?} inputs, no crash"
    fi
    rm -f "$log"
done
exit "$status"
