#!/usr/bin/env bash
# Runs the full test suite against real services: installs what is missing
# (scripts/install-deps.sh), starts Tansu (Kafka protocol) and Redis on free
# ports, runs every test (unit, property and integration), and stops the
# services on exit. Extra arguments are passed to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

# --with-browser: Debian Chromium and npm playwright-core for the live page's browser test.
bash scripts/install-deps.sh --with-browser
export KWB_CHROMIUM="${KWB_CHROMIUM:-/usr/bin/chromium}"

state_dir="$(mktemp -d -t kwb-test-XXXXXX)"
cleanup() {
  bash scripts/services.sh down "$state_dir" || true
}
trap cleanup EXIT

bash scripts/services.sh up "$state_dir"
# shellcheck disable=SC1091
source "$state_dir/env"
echo "[test] broker $KWB_TEST_BROKERS, redis $KWB_TEST_REDIS_URL"

# Unit and property tests of every crate, then the integration suite (one
# binary, tests/it). Integration tests mostly wait on the network: run more at
# once than cores.
cargo test --workspace --all-targets --no-fail-fast "$@" -- --test-threads=4
