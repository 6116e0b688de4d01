#!/usr/bin/env bash
# Builds fake-mongod and runs the pymongo smoke test against it
# (or against $MONGODB_URI when set).
set -euo pipefail
cd "$(dirname "$0")/.."

req=tests/pymongo/requirements.txt
want=$(sed -n 's/^pymongo==//p' "$req")
have=$(python3 -c 'import pymongo; print(pymongo.version)' 2>/dev/null || true)
if [ "$have" != "$want" ]; then
    echo "pymongo-smoke: installing pymongo $want (found: ${have:-none})"
    python3 -m pip install --quiet -r "$req"
fi

if [ -z "${MONGODB_URI:-}" ]; then
    # the same package set and profile as spec-conformance.sh, so the two share one build
    cargo build --workspace --all-targets
    exec python3 tests/pymongo/smoke.py --binary "${CARGO_TARGET_DIR:-target}/debug/fake-mongod"
fi
exec python3 tests/pymongo/smoke.py
