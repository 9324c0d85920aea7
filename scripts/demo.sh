#!/usr/bin/env bash
# Installs what is missing, then runs the A/B benchmark's short version
# (about two minutes): shm (notify, poll, periodic) vs gRPC over UDS vs TCP
# vs in-process, unary / ping-pong / one-way, and prints the table.
# Flags pass through, e.g. ./scripts/demo.sh --svg=/tmp/ab.svg --json=ab.json
# (./scripts/demo.sh --help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
bazel build //benchmarks:ab_bench
./bazel-bin/benchmarks/ab_bench --quick "$@"
