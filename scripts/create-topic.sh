#!/usr/bin/env bash
# create-topic.sh — create a Kafka topic on a Tansu broker with the tansu CLI (for the demo and for humans;
# integration tests may use the Rust admin client instead). Idempotent: an existing topic is success
# (a warning is printed if its partition count differs from the one asked for).
#
# Usage: scripts/create-topic.sh NAME PARTITIONS [BROKERS]
#   BROKERS: host:port[,host:port...] (first one is used; a tcp:// prefix is accepted).
#            Default: $KWB_TEST_BROKERS, else from the env file of scripts/services.sh
#            (${KWB_STATE_DIR:-$PWD/.services}/env), else 127.0.0.1:9092.
# Tansu binary: $KWB_TANSU_BIN, else ${KWB_TOOLS_DIR:-$HOME/.cache/kafka-ws-bridge}/bin/tansu, else PATH.
set -euo pipefail
shopt -s inherit_errexit

log() { printf '[create-topic] %s\n' "$*" >&2; }
die() {
    printf '[create-topic] ERROR: %s\n' "$*" >&2
    exit 1
}
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    usage
    exit 0
fi
if [ "$#" -lt 2 ] || [ "$#" -gt 3 ]; then
    usage >&2
    exit 2
fi
NAME="$1"
PARTITIONS="$2"
BROKERS="${3:-}"

# Tansu accepts names and partition counts that Kafka rejects (e.g. "a b", 0): validate here.
if [ "${#NAME}" -gt 249 ] || [ "$NAME" = "." ] || [ "$NAME" = ".." ] || ! [[ "$NAME" =~ ^[A-Za-z0-9._-]+$ ]]; then
    die "invalid topic name '$NAME' (Kafka allows 1-249 chars of [A-Za-z0-9._-], not '.' or '..')"
fi
if ! [[ "$PARTITIONS" =~ ^[0-9]+$ ]] || [ "$PARTITIONS" -lt 1 ]; then
    die "PARTITIONS must be a positive integer, got '$PARTITIONS'"
fi

if [ -z "$BROKERS" ]; then
    if [ -n "${KWB_TEST_BROKERS:-}" ]; then
        BROKERS="$KWB_TEST_BROKERS"
    else
        env_file="${KWB_STATE_DIR:-$PWD/.services}/env"
        if [ -s "$env_file" ]; then
            BROKERS="$(
                # shellcheck disable=SC1090
                . "$env_file"
                printf '%s' "${KWB_TEST_BROKERS:-}"
            )"
        fi
        BROKERS="${BROKERS:-127.0.0.1:9092}"
    fi
fi
BROKER="${BROKERS%%,*}"
BROKER="${BROKER#tcp://}"
HOST="${BROKER%:*}"
PORT="${BROKER##*:}"
if [ -z "$HOST" ] || [ "$HOST" = "$BROKER" ] || ! [[ "$PORT" =~ ^[0-9]+$ ]]; then
    die "broker must be host:port, got '$BROKER'"
fi

TOOLS_DIR="${KWB_TOOLS_DIR:-$HOME/.cache/kafka-ws-bridge}"
if [ -n "${KWB_TANSU_BIN:-}" ]; then
    TANSU="$KWB_TANSU_BIN"
elif [ -x "$TOOLS_DIR/bin/tansu" ]; then
    TANSU="$TOOLS_DIR/bin/tansu"
else
    TANSU="$(command -v tansu || true)"
fi
if [ -z "$TANSU" ] || [ ! -x "$TANSU" ]; then
    die "tansu not found: run scripts/install-deps.sh (or set KWB_TANSU_BIN)"
fi

# tansu retries an unreachable broker for ~25 s before failing: check TCP first to fail fast.
# shellcheck disable=SC2016 # $1/$2 are expanded by the inner bash
if ! timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$HOST" "$PORT" >/dev/null 2>&1; then
    die "broker $HOST:$PORT is not reachable (start one with: scripts/services.sh up)"
fi

URL="tcp://$HOST:$PORT"

# partitions_of NAME — partition count of an existing topic from 'tansu topic list' (JSON), empty if absent
partitions_of() {
    NO_COLOR=1 timeout 30 "$TANSU" topic list --broker "$URL" 2>/dev/null |
        python3 -c '
import json, sys
name = sys.argv[1]
try:
    topics = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
for t in topics:
    if t.get("name") == name and t.get("error_code", 0) == 0:
        print(len(t.get("partitions") or []))
' "$1" || true
}

# tansu prints its error messages on stdout; NO_COLOR keeps ANSI escapes out of them.
if out="$(NO_COLOR=1 timeout 60 "$TANSU" topic create "$NAME" --partitions "$PARTITIONS" --broker "$URL" 2>&1)"; then
    log "created topic '$NAME' with $PARTITIONS partition(s) on $HOST:$PORT"
    exit 0
fi

existing="$(partitions_of "$NAME")"
if grep -q 'already exists' <<<"$out" || [ -n "$existing" ]; then
    if [ -n "$existing" ] && [ "$existing" != "$PARTITIONS" ]; then
        log "WARNING: topic '$NAME' already exists with $existing partition(s), not $PARTITIONS (left unchanged)"
    else
        log "topic '$NAME' already exists on $HOST:$PORT${existing:+ ($existing partition(s))}"
    fi
    exit 0
fi

printf '%s\n' "$out" >&2
die "could not create topic '$NAME' on $HOST:$PORT"
