#!/usr/bin/env bash
# The clustersync demo: starts two local test replica sets (fake-mongod), loads sample data,
# syncs one to the other with live writes going on, commits, and prints the verification.
#
# Set CLUSTERSYNC_TEST_SOURCE_URI and CLUSTERSYNC_TEST_DESTINATION_URI to run it against real
# MongoDB replica sets instead (it only touches databases named cs<random>_...).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building (release)"
cargo build --release --quiet -p clustersync-coordinator --bin clustersync -p clustersync-e2e --bin demo
export CLUSTERSYNC_BIN="${CARGO_TARGET_DIR:-target}/release/clustersync"
exec "${CARGO_TARGET_DIR:-target}/release/demo"
