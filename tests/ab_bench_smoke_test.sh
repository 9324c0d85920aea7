#!/usr/bin/env bash
# Smoke test of the A/B benchmark tool: a tiny run over every transport and
# shape must succeed and write JSON, CSV and SVG with the documented fields;
# a bad flag must print usage and exit 2. (Numbers are not checked: that is
# what the benchmark itself is for.)
set -euo pipefail
bench="$TEST_SRCDIR/$TEST_WORKSPACE/benchmarks/ab_bench"
out="$TEST_TMPDIR"

if "$bench" --transports=bogus 2> "$out/usage.txt"; then
  echo "a bad flag was accepted"; exit 1
fi
grep -q "usage:" "$out/usage.txt" || { echo "no usage on a bad flag"; exit 1; }

"$bench" --duration=0.05 --rounds=1 --sizes=64,65536 --concurrency=1,4 \
  --json="$out/r.json" --csv="$out/r.csv" --svg="$out/r.svg" \
  > "$out/table.txt" 2> "$out/progress.txt"

for transport in shm-notify shm-poll shm-periodic uds tcp inproc; do
  for shape in unary pingpong oneway; do
    grep -q "\"transport\": \"$transport\", \"shape\": \"$shape\"" "$out/r.json" \
      || { echo "no $transport $shape row"; exit 1; }
  done
done
for field in size concurrency p50_us p99_us qps cpu_us_per_call; do
  grep -q "\"$field\": " "$out/r.json" || { echo "no $field"; exit 1; }
done
# 3 shapes x 2 sizes + unary x4 + ping-pong x4 = 8 cells x 6 transports,
# plus the header.
rows=$(wc -l < "$out/r.csv")
[ "$rows" -eq 49 ] || { echo "csv has $rows lines, want 49"; exit 1; }
for shape in unary pingpong; do
  grep -q "\"transport\": \"uds\", \"shape\": \"$shape\", \"size\": 4096, \"concurrency\": 4" \
    "$out/r.json" || { echo "no $shape x4 row"; exit 1; }
done
grep -q "<svg" "$out/r.svg" && grep -q "polyline" "$out/r.svg" \
  || { echo "no chart"; exit 1; }
grep -q "done in" "$out/progress.txt" || { echo "no progress"; exit 1; }
grep -q "shm-notify vs the others" "$out/table.txt" || { echo "no summary"; exit 1; }
# Every shm row went over shared memory (no fallbacks in a healthy run).
if grep '"transport": "shm-' "$out/r.json" | grep -v '"fallbacks": 0,' ; then
  echo "shm fallbacks in a healthy run"; exit 1
fi
# Another service style, end to end.
"$bench" --style=callback --transports=shm-notify,inproc --shapes=unary \
  --sizes=64 --concurrency=1 --duration=0.05 --rounds=1 > "$out/callback.txt" \
  2> /dev/null
grep -q "(callback service)" "$out/callback.txt" \
  || { echo "no callback run"; exit 1; }
if "$bench" --style=bogus 2> /dev/null; then
  echo "a bad --style was accepted"; exit 1
fi
echo "ab_bench smoke: OK"
