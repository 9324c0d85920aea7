#!/usr/bin/env bash
# Installs what is missing, then builds and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# Always run the tests: the shared disk cache must not replay old results.
bazel test --nocache_test_results //... "$@"
