#!/usr/bin/env bash
# Runs every test of the project: unit and integration tests of all crates (including the
# end-to-end syncs against fake-mongod and a real etcd), MongoDB's specification tests against
# fake-mongod, and the pymongo smoke test.
#
# Needs: etcd (Debian package etcd-server), python3 with pip, and MongoDB's spec tests at
# ../shared/spec-tests (or SPEC_TESTS_DIR). Missing pieces fail the run loudly.
#
# To run the end-to-end tests against real MongoDB deployments instead of fake-mongod, set
# CLUSTERSYNC_TEST_SOURCE_URI and CLUSTERSYNC_TEST_DESTINATION_URI (see README).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcd >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test: installing etcd (Debian package etcd-server)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null; }
    fi
    if ! command -v etcd >/dev/null 2>&1; then
        echo "test: ERROR: etcd is not installed (apt-get install -y etcd-server)" >&2
        exit 2
    fi
fi

echo "== unit, integration and end-to-end tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    echo "test: cargo-nextest not found, using cargo test"
    cargo test --workspace --no-fail-fast "$@"
fi

echo "== MongoDB specification tests against fake-mongod"
scripts/spec-conformance.sh

echo "== pymongo smoke test against fake-mongod"
scripts/pymongo-smoke.sh
