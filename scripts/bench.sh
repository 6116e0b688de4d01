#!/usr/bin/env bash
# Benchmarks clustersync: builds the release binaries (fake-mongod, clustersync and the bench),
# then runs the bench, which starts its own servers, prints markdown tables and writes
# target/bench/report.json. See docs/BENCHMARKS.md.
#
#   scripts/bench.sh [--size small|full] [more clustersync-bench flags, see --help]
#
# `--size small` (the default) is CI's smoke test: a few minutes on 2 cores, no thresholds.
# Distributed-mode scaling needs etcd (apt-get install -y etcd-server); without it that case is
# reported as not run.
set -euo pipefail
cd "$(dirname "$0")/.."

# CLUSTERSYNC_BENCH_PROFILE=dev builds with the dev profile instead (dependencies optimised, our
# crates not), reusing the test build: CI's smoke run does, to stay within its time budget. Its
# figures are not comparable with release runs; the report records the profile.
profile="${CLUSTERSYNC_BENCH_PROFILE:-release}"
case "$profile" in
    release) profile_dir=release ;;
    dev) profile_dir=debug ;;
    *) echo "bench: ERROR: CLUSTERSYNC_BENCH_PROFILE must be release or dev, not '$profile'" >&2; exit 2 ;;
esac
if [ "$profile" = dev ]; then
    # The test build's package set and features, so its artifacts are reused as they are.
    cargo build --locked --workspace --all-targets
else
    cargo build --release --locked -p fake-mongod -p clustersync-coordinator -p clustersync-bench
fi
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/$profile_dir/clustersync-bench" --bin-dir "$target_dir/$profile_dir" --build-profile "$profile" \
    --out "$target_dir/bench/report.json" "$@"
