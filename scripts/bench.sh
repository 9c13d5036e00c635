#!/usr/bin/env bash
# bench.sh — run the bridge benchmark (kwb-bench) against a local Tansu broker, start to finish:
# install the tools (scripts/install-deps.sh), start Tansu + Redis in a temporary state dir
# (scripts/services.sh up), build the release binaries, run target/release/kwb-bench with the
# given arguments, and stop the services on exit (also on failure or Ctrl-C).
#
# Usage: scripts/bench.sh [kwb-bench args...]    e.g. scripts/bench.sh --records 200000 --clients 1,100
#        scripts/bench.sh --help                 kwb-bench's own options
# Env:   CARGO_TARGET_DIR    build elsewhere than ./target (the binaries are taken from there)
#        KWB_BENCH_SKIP_INSTALL=1   do not run scripts/install-deps.sh (tools already installed)
#        KWB_BENCH_KEEP_STATE=1     keep the services' state dir (logs) after the run
# The last line kwb-bench prints is a JSON object with every figure; bridge logs go to the
# directory printed at the start (kwb-bench --log-dir to choose it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[bench] %s\n' "$*" >&2; }

for a in "$@"; do
    if [ "$a" = "-h" ] || [ "$a" = "--help" ]; then
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
        TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
        if [ -x "$TARGET/release/kwb-bench" ]; then
            echo
            "$TARGET/release/kwb-bench" --help
        fi
        exit 0
    fi
done

if [ "${KWB_BENCH_SKIP_INSTALL:-0}" != "1" ]; then
    bash scripts/install-deps.sh >&2
fi

STATE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/kwb-bench-services.XXXXXX")"
cleanup() {
    local rc=$?
    bash scripts/services.sh down "$STATE_DIR" >&2 || true
    if [ "${KWB_BENCH_KEEP_STATE:-0}" = "1" ]; then
        log "services state kept in $STATE_DIR"
    else
        rm -rf "$STATE_DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "building release binaries (CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target})"
cargo build --release --workspace --bins >&2
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BENCH="$TARGET/release/kwb-bench"
BRIDGE="$TARGET/release/kafka-ws-bridge"

bash scripts/services.sh up "$STATE_DIR" >&2
# shellcheck disable=SC1091 # written by services.sh
. "$STATE_DIR/env"
BROKER_PID="$(tr -dc '0-9' <"$STATE_DIR/tansu.pid" 2>/dev/null || true)"

log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
log "running: $BENCH --brokers $KWB_TEST_BROKERS $*"
"$BENCH" --brokers "$KWB_TEST_BROKERS" --bridge-bin "$BRIDGE" ${BROKER_PID:+--broker-pid "$BROKER_PID"} "$@"
