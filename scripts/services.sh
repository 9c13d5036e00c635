#!/usr/bin/env bash
# services.sh — run one local Tansu broker (Kafka protocol, memory storage) and one Redis on free loopback
# ports for integration tests and the demo. Everything lives in a state dir (pids, logs, ports, env file).
#
# Usage: scripts/services.sh up     [STATE_DIR]   start both, wait until really ready, write STATE_DIR/env
#        scripts/services.sh down   [STATE_DIR]   stop both by pid (TERM, up to 5 s, then KILL)
#        scripts/services.sh env    [STATE_DIR]   print the env file (eval "$(scripts/services.sh env)")
#        scripts/services.sh status [STATE_DIR]   say what is running (exit 0 only if both are up)
#
# STATE_DIR defaults to ${KWB_STATE_DIR:-$PWD/.services}. The env file exports KWB_TEST_BROKERS,
# KWB_TEST_REDIS_URL, KWB_TANSU_BIN and KWB_REDIS_SERVER_BIN.
# Binaries: $KWB_TANSU_BIN, else ${KWB_TOOLS_DIR:-$HOME/.cache/kafka-ws-bridge}/bin/tansu, else tansu on PATH;
# $KWB_REDIS_SERVER_BIN, else redis-server on PATH (scripts/install-deps.sh installs both).
# KWB_SERVICES_TIMEOUT (default 30) bounds the wait for readiness, in seconds.
set -euo pipefail
shopt -s inherit_errexit

READY_TIMEOUT="${KWB_SERVICES_TIMEOUT:-30}"
PROBE_TOPIC="kwb-ready-probe"

log() { printf '[services] %s\n' "$*" >&2; }
die() {
    printf '[services] ERROR: %s\n' "$*" >&2
    exit 1
}
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

now() { date +%s.%N; }
elapsed() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.2fs", e - s }'; }
# before DEADLINE — true while the current time is before DEADLINE (epoch seconds, fractional ok)
before() { awk -v d="$1" -v n="$(now)" 'BEGIN { exit !(n < d) }'; }

find_tansu() {
    local tools="${KWB_TOOLS_DIR:-$HOME/.cache/kafka-ws-bridge}"
    if [ -n "${KWB_TANSU_BIN:-}" ]; then
        [ -x "$KWB_TANSU_BIN" ] || die "KWB_TANSU_BIN=$KWB_TANSU_BIN is not executable"
        printf '%s\n' "$KWB_TANSU_BIN"
    elif [ -x "$tools/bin/tansu" ]; then
        printf '%s\n' "$tools/bin/tansu"
    elif command -v tansu >/dev/null 2>&1; then
        command -v tansu
    else
        die "tansu not found: run scripts/install-deps.sh (or set KWB_TANSU_BIN)"
    fi
}

find_redis_server() {
    if [ -n "${KWB_REDIS_SERVER_BIN:-}" ]; then
        [ -x "$KWB_REDIS_SERVER_BIN" ] || die "KWB_REDIS_SERVER_BIN=$KWB_REDIS_SERVER_BIN is not executable"
        printf '%s\n' "$KWB_REDIS_SERVER_BIN"
    elif command -v redis-server >/dev/null 2>&1; then
        command -v redis-server
    else
        die "redis-server not found: run scripts/install-deps.sh (or set KWB_REDIS_SERVER_BIN)"
    fi
}

find_redis_cli() {
    local dir
    dir="$(dirname "$1")"
    if [ -x "$dir/redis-cli" ]; then
        printf '%s\n' "$dir/redis-cli"
    elif command -v redis-cli >/dev/null 2>&1; then
        command -v redis-cli
    else
        die "redis-cli not found: run scripts/install-deps.sh"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# shellcheck disable=SC2016 # $1 is expanded by the inner bash
tcp_open() { timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" >/dev/null 2>&1; }

# proc_start PID — the process's start time (clock ticks since boot, field 22 of /proc/PID/stat)
proc_start() {
    local stat fields
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }" # drop "pid (comm) ", comm may contain spaces
    read -r -a fields <<<"$stat"
    printf '%s\n' "${fields[19]}"
}

# record_start PIDFILE — remember the start time of the process in PIDFILE (in PIDFILE.start)
record_start() {
    local pid
    pid="$(tr -dc '0-9' <"$1")"
    proc_start "$pid" >"$1.start" || rm -f "$1.start"
}

# pid_is NAME PIDFILE — print the pid from PIDFILE if that process is alive and is the one we started:
# same start time as recorded in PIDFILE.start, or (without that file) a command line that mentions NAME.
# Guards against a recycled pid belonging to something else.
pid_is() {
    local name="$1" file="$2" pid
    [ -s "$file" ] || return 1
    pid="$(tr -dc '0-9' <"$file")"
    [ -n "$pid" ] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    if [ -s "$file.start" ]; then
        [ "$(proc_start "$pid" || true)" = "$(cat "$file.start")" ] || return 1
    elif [ ! -r "/proc/$pid/cmdline" ] || ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$name"; then
        return 1
    fi
    printf '%s\n' "$pid"
}

tail_log() {
    local file="$1"
    if [ -f "$file" ]; then
        printf '[services] ---- last 50 lines of %s ----\n' "$file" >&2
        tail -n 50 "$file" >&2
        printf '[services] ---- end of %s ----\n' "$file" >&2
    else
        printf '[services] (no log file %s)\n' "$file" >&2
    fi
}

# stop_pid NAME PIDFILE — TERM, wait up to 5 s, then KILL.
stop_pid() {
    local name="$1" file="$2" pid i
    if ! pid="$(pid_is "$name" "$file")"; then
        if [ -e "$file" ]; then log "$name: not running (stale pid file removed)"; fi
        rm -f "$file" "$file.start"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) still alive after 5 s: KILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    if kill -0 "$pid" 2>/dev/null; then
        die "$name (pid $pid) could not be stopped"
    fi
    log "$name (pid $pid) stopped"
    rm -f "$file" "$file.start"
}

# ---------------------------------------------------------------------------------------------------
# Tansu
# ---------------------------------------------------------------------------------------------------

# start_tansu TANSU_BIN STATE_DIR — start the broker and wait until it creates a topic. Prints the port.
start_tansu() {
    local bin="$1" dir="$2" port pid deadline t0 attempt out
    local pidfile="$dir/tansu.pid" logfile="$dir/tansu.log"
    for attempt in 1 2 3; do
        port="$(free_port)"
        t0="$(now)"
        : >"$logfile"
        rm -f "$pidfile" "$pidfile.start"
        # The inner bash writes its own pid and then execs into tansu, so the pid file holds the broker's
        # pid whether or not setsid had to fork. setsid: own session, survives this script and its terminal.
        # Tansu also reads LISTENER_URL, STORAGE_ENGINE, SCHEMA_REGISTRY, ... from the environment: drop
        # those that the flags below don't override.
        # shellcheck disable=SC2016 # expanded by the inner bash
        NO_COLOR=1 setsid env -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT \
            bash -c 'echo "$$" >"$1"; shift; exec nohup "$@"' kwb-tansu "$pidfile" \
            "$bin" broker \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine "memory://tansu/" \
            >>"$logfile" 2>&1 </dev/null &
        deadline="$(awk -v t="$t0" -v d="$READY_TIMEOUT" 'BEGIN { printf "%.3f", t + d }')"

        while [ ! -s "$pidfile" ] && before "$deadline"; do sleep 0.02; done
        pid="$(tr -dc '0-9' <"$pidfile" 2>/dev/null || true)"
        [ -n "$pid" ] || {
            tail_log "$logfile"
            die "tansu did not start (no pid written)"
        }
        record_start "$pidfile"

        # Ready = our process is alive, the port accepts TCP, and the broker answers CreateTopics.
        # (Tansu exits with status 0 right away if the port is taken, so "alive" matters; and a create
        # against an unreachable broker retries for ~25 s, hence the TCP check first and the timeout.)
        local state="starting"
        while before "$deadline"; do
            if ! kill -0 "$pid" 2>/dev/null; then
                state="died"
                break
            fi
            if tcp_open "$port"; then
                if out="$(NO_COLOR=1 timeout 10 "$bin" topic create "$PROBE_TOPIC" --partitions 1 \
                    --broker "tcp://127.0.0.1:$port" 2>&1)" || grep -q 'already exists' <<<"$out"; then
                    if kill -0 "$pid" 2>/dev/null; then
                        state="ready"
                        break
                    fi
                fi
            fi
            sleep 0.1
        done

        case "$state" in
            ready)
                log "tansu ready on 127.0.0.1:$port (pid $pid) in $(elapsed "$t0")"
                printf '%s\n' "$port" >"$dir/tansu.port"
                printf '%s\n' "$port"
                return 0
                ;;
            died)
                if grep -q 'AddrInUse\|Address in use\|Address already in use' "$logfile"; then
                    log "tansu: port $port was taken meanwhile (attempt $attempt), retrying on another port"
                    rm -f "$pidfile" "$pidfile.start"
                    continue
                fi
                tail_log "$logfile"
                rm -f "$pidfile" "$pidfile.start"
                die "tansu exited during startup (see $logfile)"
                ;;
            *)
                tail_log "$logfile"
                [ -n "${out:-}" ] && log "last 'tansu topic create' output: $out"
                stop_pid tansu "$pidfile" || true
                die "tansu not ready after ${READY_TIMEOUT}s on 127.0.0.1:$port (see $logfile)"
                ;;
        esac
    done
    tail_log "$logfile"
    die "tansu: could not get a free port after 3 attempts"
}

# ---------------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------------

# start_redis REDIS_SERVER_BIN STATE_DIR — start redis daemonized, wait for PONG. Prints the port.
start_redis() {
    local bin="$1" dir="$2" cli port pid deadline t0 attempt state
    local pidfile="$dir/redis.pid" logfile="$dir/redis.log"
    cli="$(find_redis_cli "$bin")"
    for attempt in 1 2 3; do
        port="$(free_port)"
        t0="$(now)"
        : >"$logfile"
        rm -f "$pidfile" "$pidfile.start"
        "$bin" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
            --daemonize yes --pidfile "$pidfile" --logfile "$logfile" --dir "$dir" </dev/null >&2 ||
            {
                tail_log "$logfile"
                die "redis-server failed to start"
            }
        deadline="$(awk -v t="$t0" -v d="$READY_TIMEOUT" 'BEGIN { printf "%.3f", t + d }')"
        state="starting"
        while before "$deadline"; do
            if grep -q 'Address already in use' "$logfile" 2>/dev/null; then
                state="port-taken"
                break
            fi
            # Ready = PONG, and the server answering is ours (its process_id is the pid in our pid file).
            if [ "$(timeout 2 "$cli" -h 127.0.0.1 -p "$port" ping 2>/dev/null || true)" = "PONG" ] &&
                pid="$(pid_is redis-server "$pidfile")" &&
                timeout 2 "$cli" -h 127.0.0.1 -p "$port" info server 2>/dev/null | tr -d '\r' |
                grep -qx "process_id:$pid"; then
                state="ready"
                break
            fi
            sleep 0.05
        done
        case "$state" in
            ready)
                record_start "$pidfile"
                log "redis ready on 127.0.0.1:$port (pid $pid) in $(elapsed "$t0")"
                printf '%s\n' "$port" >"$dir/redis.port"
                printf '%s\n' "$port"
                return 0
                ;;
            port-taken)
                log "redis: port $port was taken meanwhile (attempt $attempt), retrying on another port"
                stop_pid redis-server "$pidfile" || true
                continue
                ;;
            *)
                tail_log "$logfile"
                stop_pid redis-server "$pidfile" || true
                die "redis not ready after ${READY_TIMEOUT}s on 127.0.0.1:$port (see $logfile)"
                ;;
        esac
    done
    tail_log "$logfile"
    die "redis: could not get a free port after 3 attempts"
}

# ---------------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------------

UP_DIR=""
up_failed() {
    local rc=$?
    if [ "$rc" -ne 0 ] && [ -n "$UP_DIR" ]; then
        log "up failed: stopping what was started"
        stop_pid tansu "$UP_DIR/tansu.pid" || true
        stop_pid redis-server "$UP_DIR/redis.pid" || true
        rm -f "$UP_DIR/env" "$UP_DIR/env.tmp" "$UP_DIR/tansu.port" "$UP_DIR/redis.port"
    fi
}

cmd_up() {
    local dir="$1" tansu redis tport rport t0
    t0="$(now)"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"

    if pid_is tansu "$dir/tansu.pid" >/dev/null && pid_is redis-server "$dir/redis.pid" >/dev/null &&
        [ -s "$dir/env" ]; then
        log "already up in $dir"
        cat "$dir/env"
        return 0
    fi
    # Partially up or stale: start from a clean slate.
    stop_pid tansu "$dir/tansu.pid"
    stop_pid redis-server "$dir/redis.pid"
    rm -f "$dir/env" "$dir/tansu.port" "$dir/redis.port"

    tansu="$(find_tansu)"
    redis="$(find_redis_server)"
    # If anything below fails, don't leave half a setup running.
    UP_DIR="$dir"
    trap up_failed EXIT
    tport="$(start_tansu "$tansu" "$dir")"
    rport="$(start_redis "$redis" "$dir")"

    {
        echo "# written by scripts/services.sh up on $(date -u +%Y-%m-%dT%H:%M:%SZ); source it or eval it"
        printf 'export KWB_TEST_BROKERS=%q\n' "127.0.0.1:$tport"
        printf 'export KWB_TEST_REDIS_URL=%q\n' "redis://127.0.0.1:$rport/"
        printf 'export KWB_TANSU_BIN=%q\n' "$tansu"
        printf 'export KWB_REDIS_SERVER_BIN=%q\n' "$redis"
    } >"$dir/env.tmp"
    mv "$dir/env.tmp" "$dir/env"
    trap - EXIT
    log "up in $(elapsed "$t0"); env file: $dir/env"
    cat "$dir/env"
}

cmd_down() {
    local dir="$1"
    if [ ! -d "$dir" ]; then
        log "nothing to stop: $dir does not exist"
        return 0
    fi
    stop_pid tansu "$dir/tansu.pid"
    stop_pid redis-server "$dir/redis.pid"
    rm -f "$dir/env" "$dir/tansu.port" "$dir/redis.port"
    log "down ($dir; logs kept)"
}

cmd_env() {
    local dir="$1"
    [ -s "$dir/env" ] || die "no env file at $dir/env: run scripts/services.sh up ${dir}"
    cat "$dir/env"
}

cmd_status() {
    local dir="$1" pid port ok=0
    if pid="$(pid_is tansu "$dir/tansu.pid")"; then
        port="$(cat "$dir/tansu.port" 2>/dev/null || echo '?')"
        if [ "$port" != "?" ] && tcp_open "$port"; then
            echo "tansu: running, pid $pid, 127.0.0.1:$port"
        else
            echo "tansu: process $pid alive but port ${port} not accepting connections"
            ok=1
        fi
    else
        echo "tansu: not running"
        ok=1
    fi
    if pid="$(pid_is redis-server "$dir/redis.pid")"; then
        port="$(cat "$dir/redis.port" 2>/dev/null || echo '?')"
        local cli pong=""
        cli="$(command -v redis-cli || true)"
        [ -n "$cli" ] && [ "$port" != "?" ] && pong="$(timeout 2 "$cli" -h 127.0.0.1 -p "$port" ping 2>/dev/null || true)"
        if [ "$pong" = "PONG" ]; then
            echo "redis: running, pid $pid, 127.0.0.1:$port"
        else
            echo "redis: process $pid alive but no PONG on port ${port}"
            ok=1
        fi
    else
        echo "redis: not running"
        ok=1
    fi
    if [ -s "$dir/env" ]; then echo "env file: $dir/env"; fi
    return "$ok"
}

main() {
    local cmd="${1:-}"
    [ "$#" -gt 0 ] && shift
    if [ "$#" -gt 1 ]; then
        usage >&2
        exit 2
    fi
    local dir="${1:-${KWB_STATE_DIR:-$PWD/.services}}"
    case "$cmd" in
        up) cmd_up "$dir" ;;
        down) cmd_down "$dir" ;;
        env) cmd_env "$dir" ;;
        status) cmd_status "$dir" ;;
        -h | --help | help) usage ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
}

main "$@"
