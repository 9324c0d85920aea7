#!/usr/bin/env bash
# Installs what is missing, then builds and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# Build first, so that tests that start servers and time them do not share
# the cores with compiles; always run the tests: the shared disk cache must
# not replay old results.
bazel build //... "$@"
bazel test --nocache_test_results //... "$@"
