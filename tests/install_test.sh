#!/usr/bin/env bash
# scripts/install.sh lays the programs out so that they run from the prefix:
# the installed shmgrpc-bench finds the installed echo server (not one in
# Bazel's runfiles), shmgrpc-dump runs, bad flags print usage, and
# --uninstall removes everything it put there.
set -euo pipefail
runfiles="$TEST_SRCDIR/$TEST_WORKSPACE"
prefix="$TEST_TMPDIR/prefix"
install="$runfiles/scripts/install.sh"

if "$install" --bogus 2> "$TEST_TMPDIR/usage.txt"; then
  echo "install.sh accepted a bad flag"; exit 1
fi
grep -q "usage:" "$TEST_TMPDIR/usage.txt" || { echo "no usage"; exit 1; }

"$install" --prefix="$prefix" --from="$runfiles" > "$TEST_TMPDIR/install.txt"
for name in shmgrpc-bench shmgrpc-dump; do
  [ -L "$prefix/bin/$name" ] || { echo "no $prefix/bin/$name"; exit 1; }
done

# Outside Bazel's test environment, so nothing can come from the runfiles.
outside=(env -u TEST_SRCDIR -u TEST_WORKSPACE -u RUNFILES_DIR
         -u RUNFILES_MANIFEST_FILE)
cd "$TEST_TMPDIR"
"${outside[@]}" "$prefix/bin/shmgrpc-bench" --duration=0.05 --rounds=1 \
  --sizes=64 --shapes=unary --concurrency=1 --transports=shm-notify,uds \
  --json="$TEST_TMPDIR/r.json" > "$TEST_TMPDIR/table.txt" 2> /dev/null
for transport in shm-notify uds; do
  grep -q "\"transport\": \"$transport\", \"shape\": \"unary\"" \
    "$TEST_TMPDIR/r.json" || { echo "no $transport row"; exit 1; }
done
if "${outside[@]}" "$prefix/bin/shmgrpc-bench" --sizes=x \
    2> "$TEST_TMPDIR/bench_usage.txt"; then
  echo "shmgrpc-bench accepted a bad flag"; exit 1
fi
grep -q "usage: .*shmgrpc-bench" "$TEST_TMPDIR/bench_usage.txt" \
  || { echo "no shmgrpc-bench usage"; exit 1; }
"${outside[@]}" "$prefix/bin/shmgrpc-dump" --pid=$$ > "$TEST_TMPDIR/dump.txt"

"$install" --prefix="$prefix" --uninstall > /dev/null
[ ! -e "$prefix/lib/shmgrpc" ] || { echo "lib/shmgrpc left behind"; exit 1; }
[ -z "$(ls -A "$prefix/bin")" ] || { echo "links left in bin"; exit 1; }
echo "install: OK"
