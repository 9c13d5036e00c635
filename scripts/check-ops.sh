#!/usr/bin/env bash
# check-ops.sh — validates the operations kit: alert and recording rules (promtool check + unit tests),
# Prometheus and Alertmanager configs (promtool / amtool, incl. severity routing and the alert names of the
# inhibit rules), docker-compose.yml, the
# Grafana dashboard JSON and provisioning, and the alert <-> runbook mapping. Every check runs; the script
# prints each failure and exits 1 if there was any.
#
# Usage: scripts/check-ops.sh
# Tools: promtool, amtool, jq (installed by scripts/install-deps.sh, which this script runs first); for the
# compose file: docker-compose (or the `docker compose` plugin) and/or python3 with PyYAML. Nothing is
# installed here beyond what install-deps.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh >/dev/null || {
    echo "[check-ops] ERROR: scripts/install-deps.sh failed (run it alone to see why)" >&2
    exit 1
}

ALERTS=rules/kafka-ws-bridge.alerts.yml
RECORDING=rules/kafka-ws-bridge.recording.yml
PROM_CONFIG=deploy/prometheus/prometheus.yml
AM_CONFIG=deploy/alertmanager/alertmanager.yml
DASHBOARD=deploy/grafana/dashboards/kafka-ws-bridge.json
RUNBOOK_BASE="https://github.com/example/kafka-ws-bridge/blob/main/runbooks/"

failures=()
fail() {
    printf '[check-ops] FAIL: %s\n' "$*" >&2
    failures+=("$*")
}
# step NAME CMD... — run a command, record a failure if it fails (its output is shown either way).
step() {
    local name="$1"
    shift
    printf '\n== %s\n' "$name"
    if ! "$@"; then
        fail "$name"
    fi
}

need() {
    command -v "$1" >/dev/null 2>&1 || {
        echo "[check-ops] ERROR: '$1' not found after scripts/install-deps.sh" >&2
        exit 1
    }
}
need promtool
need amtool
need jq

# --------------------------------------------------------------------------------------------------
# 1. Rules
# --------------------------------------------------------------------------------------------------
step "promtool check rules" promtool check rules rules/*.yml
step "promtool test rules" promtool test rules rules/tests/*.yml

alert_names() { sed -n 's/^[[:space:]]*- alert:[[:space:]]*\([A-Za-z0-9_]*\).*/\1/p' "$ALERTS"; }
record_names() { sed -n 's/^[[:space:]]*- record:[[:space:]]*\([A-Za-z0-9_:]*\).*/\1/p' "$RECORDING"; }

check_alert_fields() {
    # Each alert block (from one "- alert:" to the next) must carry the labels and annotations every alert has.
    awk -v base="$RUNBOOK_BASE" '
        function finish() {
            if (name == "") return
            if (!sev) { print "alert " name ": no severity label (critical|high|warning|info)"; bad = 1 }
            if (!svc) { print "alert " name ": no service: kafka-ws-bridge label"; bad = 1 }
            if (!sum) { print "alert " name ": no summary annotation"; bad = 1 }
            if (!desc) { print "alert " name ": no description annotation"; bad = 1 }
            if (!rb) { print "alert " name ": runbook_url is not \"" base name ".md\""; bad = 1 }
            if (!expr) { print "alert " name ": no expr"; bad = 1 }
        }
        /^[[:space:]]*- (alert|record):/ {
            finish()
            name = ""; sev = svc = sum = desc = rb = expr = 0
            if ($2 == "alert:") name = $3
            next
        }
        name != "" && /^[[:space:]]+severity:[[:space:]]*(critical|high|warning|info)[[:space:]]*$/ { sev = 1 }
        name != "" && /^[[:space:]]+service:[[:space:]]*kafka-ws-bridge[[:space:]]*$/ { svc = 1 }
        name != "" && /^[[:space:]]+summary:[[:space:]]*"/ { sum = 1 }
        name != "" && /^[[:space:]]+description:[[:space:]]*"/ { desc = 1 }
        name != "" && /^[[:space:]]+expr:/ { expr = 1 }
        name != "" && /^[[:space:]]+runbook_url:/ {
            if (index($0, "\"" base name ".md\"") > 0) rb = 1
        }
        END { finish(); if (!bad) print "all alerts carry severity, service, summary, description, runbook_url"; exit bad }
    ' "$ALERTS"
}
step "every alert has severity, service, summary, description, runbook_url" check_alert_fields

check_rule_tests() {
    local ok=0 name pos neg
    for name in $(alert_names); do
        # A test for an alert is "alertname: X" followed by its exp_alerts: [] (negative) or a list (positive).
        pos=$(awk -v n="$name" '$1 == "alertname:" && $2 == n { getline; if ($0 !~ /exp_alerts:[[:space:]]*\[\]/) c++ } END { print c + 0 }' rules/tests/*.yml)
        neg=$(awk -v n="$name" '$1 == "alertname:" && $2 == n { getline; if ($0 ~ /exp_alerts:[[:space:]]*\[\]/) c++ } END { print c + 0 }' rules/tests/*.yml)
        if [ "$pos" -lt 1 ]; then
            echo "alert $name: no promtool test where it fires"
            ok=1
        fi
        if [ "$neg" -lt 1 ]; then
            echo "alert $name: no promtool test where it does not fire"
            ok=1
        fi
        if ! grep -q "alertname: $name\$" rules/tests/idle.test.yml; then
            echo "alert $name: not asserted silent on an idle topic (rules/tests/idle.test.yml)"
            ok=1
        fi
    done
    for name in $(record_names); do
        if ! grep -q -- "expr:.*${name}" rules/tests/recording.test.yml; then
            echo "recording rule $name: no promql_expr_test in rules/tests/recording.test.yml"
            ok=1
        fi
    done
    [ "$ok" -eq 0 ] && echo "$(alert_names | wc -l) alerts and $(record_names | wc -l) recording rules have unit tests"
    return "$ok"
}
step "every alert and recording rule has unit tests" check_rule_tests

# --------------------------------------------------------------------------------------------------
# 2. Prometheus and Alertmanager configuration
# --------------------------------------------------------------------------------------------------
# Relative rule_files in the config resolve against the config file's directory: ../../rules/*.yml.
step "promtool check config $PROM_CONFIG" promtool check config "$PROM_CONFIG"

check_prom_rule_files() {
    # The config must load exactly the rule files of this repository (not the unit tests).
    local n
    n=$(promtool check config "$PROM_CONFIG" 2>&1 | sed -n 's/.*SUCCESS: \([0-9]*\) rule files found.*/\1/p')
    if [ "$n" != "$(ls rules/*.yml | wc -l | tr -d ' ')" ]; then
        echo "$PROM_CONFIG loads ${n:-0} rule files, rules/ has $(ls rules/*.yml | wc -l)"
        return 1
    fi
    grep -q 'job_name: kafka-ws-bridge' "$PROM_CONFIG" || {
        echo "$PROM_CONFIG has no scrape job 'kafka-ws-bridge' (ServiceDown depends on it)"
        return 1
    }
    echo "loads $n rule files; scrapes job kafka-ws-bridge"
}
step "prometheus.yml loads rules/*.yml and scrapes job kafka-ws-bridge" check_prom_rule_files

step "amtool check-config $AM_CONFIG" amtool check-config "$AM_CONFIG"

check_routing() {
    local sev want got ok=0
    for sev in critical high warning info; do
        want=chat
        [ "$sev" = critical ] && want=pager
        got=$(amtool config routes test --config.file="$AM_CONFIG" severity="$sev" alertname=Any service=kafka-ws-bridge 2>/dev/null | tr -d '[:space:]')
        if [ "$got" != "$want" ]; then
            echo "severity=$sev routes to '$got', expected '$want'"
            ok=1
        else
            echo "severity=$sev -> $got"
        fi
    done
    return "$ok"
}
step "alertmanager routes critical -> pager, others -> chat" check_routing

check_inhibit_names() {
    # Every alert name an inhibit rule matches (alertname = "X" or alertname =~ "X|Y") must be an alert of the
    # rules: a renamed alert would otherwise silently stop being inhibited (or inhibiting).
    local ok=0 n name
    n=0
    for name in $(sed -n 's/^[[:space:]]*-[[:space:]]*alertname[[:space:]]*=~\{0,1\}[[:space:]]*"\([^"]*\)".*/\1/p' "$AM_CONFIG" | tr '|' '\n'); do
        n=$((n + 1))
        alert_names | grep -qx "$name" || { echo "$AM_CONFIG inhibits on '$name', which no alert rule defines"; ok=1; }
    done
    [ "$ok" -eq 0 ] && echo "$n alert names in inhibit rules, all defined"
    return "$ok"
}
step "alertmanager inhibit rules name existing alerts" check_inhibit_names

# --------------------------------------------------------------------------------------------------
# 3. docker-compose.yml
# --------------------------------------------------------------------------------------------------
find_yaml_python() {
    local py
    for py in python3 /usr/bin/python3; do
        if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import yaml' >/dev/null 2>&1; then
            echo "$py"
            return 0
        fi
    done
    return 1
}

check_compose() {
    local validated=0 py
    if command -v docker-compose >/dev/null 2>&1; then
        echo "docker-compose config:"
        ADMIN_TOKEN="${ADMIN_TOKEN:-config-check-only-0123456789}" docker-compose -f docker-compose.yml config -q || return 1
        validated=1
    elif command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
        echo "docker compose config:"
        ADMIN_TOKEN="${ADMIN_TOKEN:-config-check-only-0123456789}" docker compose -f docker-compose.yml config -q || return 1
        validated=1
    fi
    if py=$(find_yaml_python); then
        echo "structural check ($py + PyYAML):"
        "$py" - <<'PY' || return 1
import os, sys, yaml
doc = yaml.safe_load(open("docker-compose.yml"))
errors = []
services = doc.get("services") or {}
need = {"kafka", "kafka-init", "redis", "bridge", "bridge-2", "lb", "producer", "prometheus", "alertmanager", "grafana"}
missing = need - set(services)
if missing:
    errors.append(f"services missing: {sorted(missing)}")
for name, svc in services.items():
    image = svc.get("image", "")
    if "build" not in svc and (":" not in image or image.endswith(":latest")):
        errors.append(f"{name}: image '{image}' is not pinned to a tag")
    deps = svc.get("depends_on") or []
    for dep in (deps if isinstance(deps, list) else deps.keys()):
        if dep not in services:
            errors.append(f"{name}: depends_on unknown service '{dep}'")
    for vol in svc.get("volumes") or []:
        src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
        if src.startswith(".") and not os.path.exists(src):
            errors.append(f"{name}: bind mount source '{src}' does not exist")
    if "build" in svc:
        ctx = svc["build"] if isinstance(svc["build"], str) else svc["build"].get("context", ".")
        if not os.path.exists(os.path.join(ctx, "Dockerfile")):
            errors.append(f"{name}: no Dockerfile in build context '{ctx}'")
kafka = services.get("kafka", {})
if not str(kafka.get("image", "")).startswith("apache/kafka:"):
    errors.append("kafka: expected the official apache/kafka image")
env = kafka.get("environment") or {}
if "controller" not in str(env.get("KAFKA_PROCESS_ROLES", "")):
    errors.append("kafka: not in KRaft mode (KAFKA_PROCESS_ROLES)")
init = " ".join(map(str, services.get("kafka-init", {}).get("command") or []))
for topic, parts in (("dashstream-quality", "3"), ("dashstream-quality-dlq", "1")):
    if f"--topic {topic} --partitions {parts}" not in init:
        errors.append(f"kafka-init: does not create {topic} with {parts} partition(s)")
benv = services.get("bridge", {}).get("environment") or {}
for k, v in {"KAFKA_BROKERS": "kafka:9092", "WEBSOCKET_HOST": "0.0.0.0"}.items():
    if str(benv.get(k)) != v:
        errors.append(f"bridge: {k} should be {v}, is {benv.get(k)!r}")
for k in ("REDIS_URL", "ADMIN_TOKEN"):
    if k not in benv:
        errors.append(f"bridge: {k} not set")
if not str(benv.get("ADMIN_TOKEN", "")).startswith("${ADMIN_TOKEN:?"):
    errors.append("bridge: ADMIN_TOKEN must come from the environment with no default (${ADMIN_TOKEN:?...})")
b2 = services.get("bridge-2", {}).get("environment") or {}
if b2.get("KAFKA_GROUP_ID") != benv.get("KAFKA_GROUP_ID") or b2.get("REDIS_URL") != benv.get("REDIS_URL"):
    errors.append("bridge-2: must share bridge's KAFKA_GROUP_ID and REDIS_URL (one group, one Redis)")
if "./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" not in (services.get("lb", {}).get("volumes") or []):
    errors.append("lb: deploy/nginx/nginx.conf must be mounted")
ngx = open("deploy/nginx/nginx.conf").read()
for d in ("proxy_set_header Upgrade $http_upgrade", "proxy_set_header Connection $connection_upgrade", "server bridge:3002", "server bridge-2:3002"):
    if d not in ngx:
        errors.append(f"deploy/nginx/nginx.conf: missing '{d}'")
prod = " ".join(map(str, services.get("producer", {}).get("command") or []))
if "produce --kafka-brokers kafka:9092" not in prod or "--rate 50" not in prod:
    errors.append("producer: expected `kafka-ws-bridge produce --kafka-brokers kafka:9092 ... --rate 50`")
prom = " ".join(map(str, services.get("prometheus", {}).get("command") or []))
if "--config.file=/kwb/deploy/prometheus/prometheus.yml" not in prom:
    errors.append("prometheus: config must be mounted at /kwb/deploy/prometheus (rule_files is ../../rules/*.yml)")
if "./rules:/kwb/rules:ro" not in (services.get("prometheus", {}).get("volumes") or []):
    errors.append("prometheus: ./rules must be mounted at /kwb/rules")
for e in errors:
    print("  " + e)
print(f"  {len(services)} services, {len(errors)} problem(s)")
sys.exit(1 if errors else 0)
PY
        validated=1
    fi
    if [ "$validated" -eq 0 ]; then
        echo "no compose validator: install docker-compose (Debian: apt-get install docker-compose, which brings"
        echo "python3-yaml) or PyYAML for python3"
        return 1
    fi
}
step "docker-compose.yml" check_compose

check_dockerfile() {
    local ok=0
    grep -q '^FROM rust:1-bookworm AS builder' Dockerfile || { echo "Dockerfile: builder is not rust:1-bookworm"; ok=1; }
    grep -q '^FROM debian:bookworm-slim' Dockerfile || { echo "Dockerfile: runtime is not debian:bookworm-slim"; ok=1; }
    grep -q -- '--release --locked --bin kafka-ws-bridge' Dockerfile || { echo "Dockerfile: does not build --release --bin kafka-ws-bridge"; ok=1; }
    grep -q '^USER ' Dockerfile || { echo "Dockerfile: no non-root USER"; ok=1; }
    grep -q '^HEALTHCHECK ' Dockerfile || { echo "Dockerfile: no HEALTHCHECK"; ok=1; }
    grep -q '^EXPOSE 3002' Dockerfile || { echo "Dockerfile: no EXPOSE 3002"; ok=1; }
    grep -qx 'target/' .dockerignore || { echo ".dockerignore: target/ not excluded"; ok=1; }
    [ "$ok" -eq 0 ] && echo "Dockerfile and .dockerignore: ok"
    return "$ok"
}
step "Dockerfile" check_dockerfile

# --------------------------------------------------------------------------------------------------
# 4. Grafana
# --------------------------------------------------------------------------------------------------
check_dashboard() {
    jq -e . "$DASHBOARD" >/dev/null || {
        echo "$DASHBOARD is not valid JSON"
        return 1
    }
    local n bad
    n=$(jq '[.panels[] | select(.type != "row")] | length' "$DASHBOARD")
    bad=$(jq -r '.panels[] | select(.type != "row") | select((.targets // []) | length == 0 or any(.[]; (.expr // "") == "")) | .title' "$DASHBOARD")
    if [ -n "$bad" ]; then
        echo "panels without a PromQL expr: $bad"
        return 1
    fi
    bad=$(jq -r '.panels[] | select(.type != "row") | select(.datasource.uid != "prometheus") | .title' "$DASHBOARD")
    if [ -n "$bad" ]; then
        echo "panels not on the provisioned datasource uid 'prometheus': $bad"
        return 1
    fi
    grep -q 'uid: prometheus' deploy/grafana/provisioning/datasources/*.yml || {
        echo "no provisioned datasource with uid prometheus"
        return 1
    }
    grep -q 'path: /var/lib/grafana/dashboards' deploy/grafana/provisioning/dashboards/*.yml || {
        echo "dashboard provider does not load /var/lib/grafana/dashboards"
        return 1
    }
    # Every recording rule the dashboard uses must exist.
    local used missing=0
    for used in $(jq -r '.. | objects | .expr? // empty' "$DASHBOARD" | grep -o 'kafka_ws_bridge:[a-z0-9_:]*' | sort -u); do
        if ! record_names | grep -qx "$used"; then
            echo "dashboard uses $used, which no recording rule defines"
            missing=1
        fi
    done
    [ "$missing" -eq 0 ] || return 1
    echo "$DASHBOARD: valid JSON, $n panels, every query on datasource 'prometheus'"
}
step "Grafana dashboard and provisioning" check_dashboard

# --------------------------------------------------------------------------------------------------
# 5. Runbooks
# --------------------------------------------------------------------------------------------------
check_runbooks() {
    local ok=0 name count f
    for name in $(alert_names); do
        count=$(alert_names | grep -cx "$name")
        [ "$count" -eq 1 ] || { echo "alert $name is defined $count times"; ok=1; }
        if [ ! -f "runbooks/$name.md" ]; then
            echo "alert $name has no runbook runbooks/$name.md"
            ok=1
        elif ! head -n 1 "runbooks/$name.md" | grep -qx "# $name"; then
            echo "runbooks/$name.md does not start with '# $name'"
            ok=1
        fi
        grep -q "\[$name.md\]($name.md)" runbooks/README.md || { echo "runbooks/README.md does not list $name"; ok=1; }
    done
    for f in runbooks/*.md; do
        name=$(basename "$f" .md)
        [ "$name" = README ] && continue
        alert_names | grep -qx "$name" || { echo "runbook $f has no alert named $name"; ok=1; }
    done
    [ "$ok" -eq 0 ] && echo "$(alert_names | wc -l) alerts, $(($(ls runbooks/*.md | wc -l) - 1)) runbooks: one each"
    return "$ok"
}
step "one runbook per alert, one alert per runbook" check_runbooks

printf '\n'
if [ "${#failures[@]}" -gt 0 ]; then
    printf '[check-ops] %d check(s) FAILED:\n' "${#failures[@]}" >&2
    printf '  - %s\n' "${failures[@]}" >&2
    exit 1
fi
echo "[check-ops] all checks passed"
