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

cargo build --release --locked -p fake-mongod -p clustersync-coordinator -p clustersync-bench
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/release/clustersync-bench" --bin-dir "$target_dir/release" --out "$target_dir/bench/report.json" "$@"
