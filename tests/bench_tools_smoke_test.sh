#!/usr/bin/env bash
# Smoke test of the other benchmark programs: tiny runs must succeed and
# write the documented JSON rows; bad flags must print usage and exit 2.
# (Numbers are not checked: that is what the benchmarks are for.)
set -euo pipefail
benchmarks="$TEST_SRCDIR/$TEST_WORKSPACE/benchmarks"
out="$TEST_TMPDIR"

expect_usage() {  # program, bad flag
  if "$1" "$2" 2> "$out/usage.txt"; then
    echo "$(basename "$1") accepted $2"; exit 1
  fi
  grep -q "usage:" "$out/usage.txt" || { echo "no usage for $2"; exit 1; }
}

# multi_client_bench: client processes against one server, shm and UDS.
multi="$benchmarks/multi_client_bench"
expect_usage "$multi" --clients=0
expect_usage "$multi" --calls=x
"$multi" --clients=1,2 --calls=50 --sizes=64 --rounds=1 \
  --json="$out/multi.json" > "$out/multi.txt" 2> "$out/multi_progress.txt"
for transport in shm uds; do
  for processes in 1 2; do
    grep -q "\"transport\": \"$transport\", \"size\": 64, \"processes\": $processes" \
      "$out/multi.json" || { echo "no $transport x$processes row"; exit 1; }
  done
done
for field in qps p50_us p99_us server_cpu_us_per_call client_cpu_us_per_call; do
  grep -q "\"$field\": " "$out/multi.json" || { echo "no $field"; exit 1; }
done
grep -q "slot 4/4" "$out/multi_progress.txt" || { echo "no progress"; exit 1; }

# grpc_echo_bench, every service style.
echo_bench="$benchmarks/grpc_echo_bench"
expect_usage "$echo_bench" --style=bogus
for style in sync callback async; do
  "$echo_bench" --style="$style" --rounds=1 --sizes=64 --quick \
    --json="$out/echo_$style.json" > "$out/echo_$style.txt" 2> /dev/null
  grep -q "($style service)" "$out/echo_$style.txt" \
    || { echo "no $style header"; exit 1; }
  for transport in shm uds inproc; do
    grep -q "\"transport\": \"$transport\", \"size\": 64" "$out/echo_$style.json" \
      || { echo "$style: no $transport row"; exit 1; }
  done
  grep -q "plain: 0" "$out/echo_$style.txt" \
    || { echo "$style: shm calls went plain"; exit 1; }
done
echo "bench tools smoke: OK"
