#!/usr/bin/env bash
# Installs what is missing, then runs a short shm-vs-UDS benchmark and prints
# its table. Pass benchmark flags through, e.g. ./scripts/demo.sh --rounds=20
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
bazel build //benchmarks:shm_ring_bench
./bazel-bin/benchmarks/shm_ring_bench --quick "$@"
