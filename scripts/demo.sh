#!/usr/bin/env bash
# demo.sh — run the live demo on a fresh machine with one command:
#   1. install what is missing (scripts/install-deps.sh),
#   2. start a Tansu broker and Redis in a state dir (scripts/services.sh up),
#   3. build the bridge (cargo build --release --bin kafka-ws-bridge),
#   4. create the topics dashstream-quality (3 partitions) and dashstream-quality-dlq (1),
#   5. start `kafka-ws-bridge serve` on 127.0.0.1 and wait for /health/ready,
#   6. start `kafka-ws-bridge produce` (8 threads, 50 records/s, a gap every 500 records and an
#      undecodable record every 1000, so the metrics show something),
#   7. print the URLs to watch, then stay in the foreground until Ctrl-C (or --duration) and stop
#      everything it started: producer, bridge, broker and Redis.
#
# Usage: scripts/demo.sh [--duration SECS]
#   --duration SECS   stop by itself after SECS seconds (from the moment the demo is up)
# Env:   WEBSOCKET_PORT      port of the bridge (default 3002)
#        KWB_DEMO_DIR        state dir: pids, logs, env file (default: .services/demo in the repository)
#        CARGO_TARGET_DIR    honoured when building and locating the binary
#        Other serve settings (GAP_POLICY, ADMIN_TOKEN, RUST_LOG, ...) are passed through to the bridge.
set -euo pipefail
shopt -s inherit_errexit

log() { printf '[demo] %s\n' "$*" >&2; }
die() {
    printf '[demo] ERROR: %s\n' "$*" >&2
    exit 1
}
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

DURATION=0
while [ "$#" -gt 0 ]; do
    case "$1" in
        --duration)
            [ "$#" -ge 2 ] || die "--duration needs a number of seconds"
            DURATION="$2"
            shift
            ;;
        --duration=*) DURATION="${1#--duration=}" ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
    shift
done
[[ "$DURATION" =~ ^[0-9]+$ ]] || die "--duration must be a whole number of seconds, got '$DURATION'"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PORT="${WEBSOCKET_PORT:-3002}"
if ! [[ "$PORT" =~ ^[0-9]+$ ]] || [ "$PORT" -lt 1 ] || [ "$PORT" -gt 65535 ]; then
    die "WEBSOCKET_PORT must be a port number, got '$PORT'"
fi
STATE_DIR="${KWB_DEMO_DIR:-$ROOT/.services/demo}"
TOPIC="dashstream-quality"
DLQ_TOPIC="dashstream-quality-dlq"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
BIN="$TARGET_DIR/release/kafka-ws-bridge"
BRIDGE_LOG="$STATE_DIR/bridge.log"
PRODUCER_LOG="$STATE_DIR/producer.log"
BASE="http://127.0.0.1:$PORT"

BRIDGE_PID=""
PRODUCER_PID=""
SERVICES_STARTED=0
CLEANED=0

# alive PID — true while PID is a running child that was started by this script
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# stop NAME PID SECS — TERM, wait up to SECS seconds, then KILL.
# shellcheck disable=SC2317 # stop and cleanup run from the EXIT trap
stop() {
    local name="$1" pid="$2" secs="$3" i
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        log "$name (pid $pid) still running after ${secs}s: KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    log "$name stopped"
}

# shellcheck disable=SC2317
cleanup() {
    local rc=$?
    [ "$CLEANED" -eq 0 ] || return 0
    CLEANED=1
    trap - EXIT INT TERM
    log "stopping"
    stop producer "$PRODUCER_PID" 10
    if [ -n "$PRODUCER_PID" ] && [ -s "$PRODUCER_LOG" ] && tail -n 1 "$PRODUCER_LOG" | grep -q '"sent"'; then
        log "producer summary: $(tail -n 1 "$PRODUCER_LOG")"
    fi
    stop bridge "$BRIDGE_PID" 15
    if [ "$SERVICES_STARTED" -eq 1 ]; then
        scripts/services.sh down "$STATE_DIR" || true
    fi
    log "logs kept in $STATE_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

show_log() {
    local file="$1"
    [ -f "$file" ] || return 0
    printf '[demo] ---- last 30 lines of %s ----\n' "$file" >&2
    tail -n 30 "$file" >&2
    printf '[demo] ---- end of %s ----\n' "$file" >&2
}

# 1. Dependencies (Rust is the one thing install-deps.sh does not install).
command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install Rust >= 1.85 (https://rustup.rs), then run this script again"
missing=()
for tool in cc make pkg-config; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if command -v pkg-config >/dev/null 2>&1; then
    pkg-config --exists openssl || missing+=("libssl-dev")
    pkg-config --exists zlib || missing+=("zlib1g-dev")
fi
[ "${#missing[@]}" -eq 0 ] ||
    die "the build needs: ${missing[*]} (Debian: apt-get install build-essential pkg-config libssl-dev zlib1g-dev)"
log "installing dependencies (scripts/install-deps.sh)"
bash scripts/install-deps.sh

# Fail early if the port is taken (e.g. by a bridge left over from an earlier run).
# shellcheck disable=SC2016 # $1 is expanded by the inner bash
if timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$PORT" >/dev/null 2>&1; then
    die "port $PORT on 127.0.0.1 is already in use: stop what listens there, or run WEBSOCKET_PORT=<port> $0"
fi

# 2. Broker and Redis.
log "starting Tansu and Redis in $STATE_DIR"
mkdir -p "$STATE_DIR"
SERVICES_STARTED=1
scripts/services.sh up "$STATE_DIR" >/dev/null
BROKERS="$(
    # shellcheck disable=SC1091
    . "$STATE_DIR/env"
    printf '%s' "$KWB_TEST_BROKERS"
)"
[ -n "$BROKERS" ] || die "no KWB_TEST_BROKERS in $STATE_DIR/env"
REDIS_URL="$(
    # shellcheck disable=SC1091
    . "$STATE_DIR/env"
    printf '%s' "$KWB_TEST_REDIS_URL"
)"
log "broker at $BROKERS, redis at $REDIS_URL"

# 3. Build.
log "building (cargo build --release --bin kafka-ws-bridge)"
cargo build --release --bin kafka-ws-bridge
[ -x "$BIN" ] || die "binary not found at $BIN after the build"

# 4. Topics.
scripts/create-topic.sh "$TOPIC" 3 "$BROKERS"
scripts/create-topic.sh "$DLQ_TOPIC" 1 "$BROKERS"

# 5. Bridge. setsid: its own process group, so a Ctrl-C in this terminal reaches only this script,
# which then stops the bridge with a single TERM (a second signal would make it exit without committing).
: >"$BRIDGE_LOG"
log "starting the bridge on 127.0.0.1:$PORT (log: $BRIDGE_LOG)"
KAFKA_BROKERS="$BROKERS" KAFKA_TOPIC="$TOPIC" WEBSOCKET_HOST=127.0.0.1 WEBSOCKET_PORT="$PORT" \
    KAFKA_PROPERTIES="session.timeout.ms=6000" REDIS_URL="$REDIS_URL" \
    setsid "$BIN" serve >>"$BRIDGE_LOG" 2>&1 </dev/null &
BRIDGE_PID=$!

log "waiting for $BASE/health/ready"
deadline=$((SECONDS + 90))
until curl -fsS -m 2 "$BASE/health/ready" >/dev/null 2>&1; do
    if ! alive "$BRIDGE_PID"; then
        show_log "$BRIDGE_LOG"
        BRIDGE_PID=""
        die "the bridge exited during start-up"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        show_log "$BRIDGE_LOG"
        curl -sS -m 2 "$BASE/health/ready" >&2 || true
        die "the bridge was not ready after 90 s"
    fi
    sleep 0.5
done
log "bridge ready"

# 6. Producer (KAFKA_PROPERTIES is a consumer setting here: not passed to the producer).
: >"$PRODUCER_LOG"
log "starting the producer: 8 threads, 50 records/s, --gap-every 500 --garbage-every 1000 (log: $PRODUCER_LOG)"
env -u KAFKA_PROPERTIES KAFKA_BROKERS="$BROKERS" KAFKA_TOPIC="$TOPIC" \
    setsid "$BIN" produce --threads 8 --rate 50 --gap-every 500 --garbage-every 1000 \
    >>"$PRODUCER_LOG" 2>&1 </dev/null &
PRODUCER_PID=$!

# 7. Where to look.
WS_URL="ws://127.0.0.1:$PORT/ws?format=json"
cat <<EOF

  kafka-ws-bridge demo is running.

  WebSocket (JSON frames):  $WS_URL
  Watch it:                 $BIN tail --url '$WS_URL'
  Health:                   $BASE/health   (ready: $BASE/health/ready)
  Metrics:                  $BASE/metrics
  Halted threads (admin):   curl -H 'X-Bridge-Admin: 1' $BASE/admin/threads/halted
  Logs:                     $BRIDGE_LOG
                            $PRODUCER_LOG
  Stop:                     Ctrl-C$([ "$DURATION" -gt 0 ] && printf ' (or wait %s s)' "$DURATION")

  Page:                     $BASE/

EOF

end=$((SECONDS + DURATION))
while :; do
    if ! alive "$BRIDGE_PID"; then
        show_log "$BRIDGE_LOG"
        BRIDGE_PID=""
        die "the bridge exited unexpectedly"
    fi
    if ! alive "$PRODUCER_PID"; then
        show_log "$PRODUCER_LOG"
        PRODUCER_PID=""
        die "the producer exited unexpectedly"
    fi
    if [ "$DURATION" -gt 0 ] && [ "$SECONDS" -ge "$end" ]; then
        log "--duration $DURATION reached"
        break
    fi
    sleep 1
done
exit 0
