#!/usr/bin/env bash
# Runs the tests under sanitizers (installs what is missing first):
#   every test with AddressSanitizer + LeakSanitizer + UBSan, and
#   the tests that do not link gRPC with ThreadSanitizer.
# gRPC, protobuf and abseil are Debian's uninstrumented builds: ThreadSanitizer
# cannot see their synchronization, so on the gRPC-layer tests it reports
# every hand-off through a completion queue or the in-process transport as a
# race (thousands per run) and its report path stalls the processes (see
# docs/ARCHITECTURE.md, "Sanitizers and lock order"). Extra arguments go to
# both bazel runs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# Each stage builds first: tests that start servers and time them should not
# share the two cores with sanitizer-instrumented compiles.
echo "== AddressSanitizer, LeakSanitizer, UBSan: every test"
bazel build --config=asan //... "$@"
bazel test --config=asan --nocache_test_results //... "$@"
echo "== ThreadSanitizer: tests that do not link gRPC"
mapfile -t tsan_tests < <(bazel query \
  'tests(//...) except rdeps(//..., //bazel:grpc)' 2>/dev/null)
bazel build --config=tsan "${tsan_tests[@]}" "$@"
bazel test --config=tsan --nocache_test_results "${tsan_tests[@]}" "$@"
