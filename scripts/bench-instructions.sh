#!/usr/bin/env bash
# bench-instructions.sh — the bridge's CPU work per record as a count of instructions, which
# does not move with the machine's load the way CPU seconds do: kwb-bench's 1-client ingest run
# (default settings) with the bridge under `valgrind --tool=callgrind`.
#
# Usage: scripts/bench-instructions.sh [BRIDGE_BIN ...]   (default: target/release/kafka-ws-bridge)
#        several binaries are measured one after the other, for a side-by-side comparison
# Env:   KWB_TEST_BROKERS   the broker (scripts/services.sh up DIR; source DIR/env)
#        RECORDS            records of the ingest run (default 100000)
#        KEEP=DIR           keep the callgrind files in DIR (for callgrind_annotate)
# Per binary it prints the instructions of the ingest run, of the latency run (start-up and
# idle, 100 records), and their difference per record. Under valgrind the bridge runs one
# thread at a time, about 50 times slower: librdkafka's timers and statistics weigh more per
# record than at full speed, so compare binaries with each other, not with CPU seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
: "${KWB_TEST_BROKERS:?start the services first: scripts/services.sh up DIR && source DIR/env}"
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
command -v callgrind_annotate >/dev/null || { echo "callgrind_annotate is needed (valgrind)" >&2; exit 1; }
BENCH="${CARGO_TARGET_DIR:-$ROOT/target}/release/kwb-bench"
[ -x "$BENCH" ] || { echo "build it first: cargo build --release -p kwb-bench --bin kwb-bench" >&2; exit 1; }
RECORDS="${RECORDS:-100000}"
[ $# -gt 0 ] || set -- "${CARGO_TARGET_DIR:-$ROOT/target}/release/kafka-ws-bridge"

WORK="${KEEP:-$(mktemp -d "${TMPDIR:-/tmp}/kwb-instructions.XXXXXX")}"
mkdir -p "$WORK"
[ -n "${KEEP:-}" ] || trap 'rm -rf "$WORK"' EXIT

total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done { gsub(",", "", $1); print $1; done = 1 }'; }

i=0
for bin in "$@"; do
    i=$((i + 1))
    bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
    out="$WORK/$i"
    mkdir -p "$out"
    wrapper="$out/bridge.sh"
    printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s/callgrind.%%p %s "$@"\n' \
        "$out" "$bin" >"$wrapper"
    chmod +x "$wrapper"
    "$BENCH" --clients 1 --idle-connections 0 --paced-clients 0 --latency-secs 1 --latency-rate 100 \
        --records "$RECORDS" --bridge-bin "$wrapper" >"$out/kwb-bench.log" 2>&1 ||
        { echo "kwb-bench failed for $bin: see $out/kwb-bench.log" >&2; KEEP=1; exit 1; }
    # In start order: the ingest run's bridge, then the latency run's.
    mapfile -t files < <(ls -tr "$out"/callgrind.*)
    [ "${#files[@]}" -ge 2 ] || { echo "expected two callgrind files in $out" >&2; exit 1; }
    ingest="$(total "${files[0]}")"
    idle="$(total "${files[1]}")"
    printf '%s: ingest run %s instructions, start-up and idle %s, %s per record (%s records)\n' \
        "$bin" "$ingest" "$idle" "$(( (ingest - idle) / RECORDS ))" "$RECORDS"
done
