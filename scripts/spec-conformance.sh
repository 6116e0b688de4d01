#!/usr/bin/env bash
# Runs MongoDB's unified-format specification tests against fake-mongod and
# checks them against tests/spec-runner/expected-pass.txt.
#
# Needs the spec tests at ../shared/spec-tests next to the repository (or
# SPEC_TESTS_DIR). Extra arguments go to spec-runner, e.g. --verbose,
# --suite crud, --filter find, --uri mongodb://...
set -euo pipefail
cd "$(dirname "$0")/.."

spec_dir=${SPEC_TESTS_DIR:-../shared/spec-tests}
if [ ! -d "$spec_dir" ]; then
    echo "spec-conformance: ERROR: spec tests not found at $spec_dir" >&2
    echo "spec-conformance: the MongoDB specification tests must be present as shared/spec-tests next to the repository (or set SPEC_TESTS_DIR)" >&2
    exit 2
fi
spec_dir=$(cd "$spec_dir" && pwd)

# one build for both scripts: the same package set keeps dependency features (and artifacts) shared
# The dev profile (dependencies optimised, see Cargo.toml) and the whole workspace with every
# target: the same package set and features as `cargo nextest run --workspace` in
# scripts/test.sh, whose build this then reuses instead of compiling dependencies again.
cargo build --workspace --all-targets
exec "${CARGO_TARGET_DIR:-target}/debug/spec-runner" \
    --spec-dir "$spec_dir" \
    --expected tests/spec-runner/expected-pass.txt \
    "$@"
