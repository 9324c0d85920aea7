#!/usr/bin/env bash
# Installs shmgrpc's programs under a prefix (default /usr/local):
#   bin/shmgrpc-bench  the A/B benchmark (//benchmarks:ab_bench)
#   bin/shmgrpc-dump   the leak dump tool (//tools:shm_dump)
# The real files go to lib/shmgrpc/ in the layout the benchmark uses to find
# its echo server (lib/shmgrpc/tests/echo_server beside
# lib/shmgrpc/benchmarks/ab_bench); bin/ holds symlinks. The binaries link
# only Debian's shared libraries (gRPC 1.51, protobuf, abseil), so they run
# wherever those packages are installed.
#
# usage: scripts/install.sh [--prefix=DIR] [--uninstall] [--from=BAZEL_BIN]
#   --prefix=DIR      where to install (default /usr/local)
#   --uninstall       remove what an install under DIR put there
#   --from=BAZEL_BIN  copy already built binaries from this bazel-bin
#                     layout instead of installing the dependencies and
#                     building (used by the install test)
set -euo pipefail

usage() {  # exit code
  sed -n '/^# usage:/,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit "$1"
}

prefix=/usr/local
from=""
uninstall=false
for arg in "$@"; do
  case "$arg" in
    --prefix=?*) prefix="${arg#--prefix=}" ;;
    --from=?*) from="${arg#--from=}" ;;
    --uninstall) uninstall=true ;;
    -h|--help) usage 0 ;;
    *) echo "bad argument: $arg" >&2; usage 2 ;;
  esac
done

lib="$prefix/lib/shmgrpc"
bin="$prefix/bin"
# installed file (under lib/shmgrpc) and its name in bin/; "" = not linked
programs=(
  "benchmarks/ab_bench shmgrpc-bench"
  "tests/echo_server "
  "tools/shm_dump shmgrpc-dump"
)

if $uninstall; then
  for entry in "${programs[@]}"; do
    read -r _ name <<< "$entry"
    if [ -n "$name" ]; then rm -f "$bin/$name"; fi
  done
  rm -rf "$lib"
  echo "removed $lib and its links in $bin"
  exit 0
fi

if [ -z "$from" ]; then
  cd "$(dirname "$0")/.."
  ./scripts/install-deps.sh
  bazel build //benchmarks:ab_bench //tests:echo_server //tools:shm_dump
  from="$(bazel info bazel-bin 2> /dev/null)"
fi

mkdir -p "$bin"
for entry in "${programs[@]}"; do
  read -r file name <<< "$entry"
  mkdir -p "$lib/$(dirname "$file")"
  # -L: bazel-bin and runfiles hold symlinks; install the files themselves.
  cp -L "$from/$file" "$lib/$file.new"
  chmod 0755 "$lib/$file.new"
  mv -f "$lib/$file.new" "$lib/$file"
  if [ -n "$name" ]; then
    ln -sfn "$lib/$file" "$bin/$name"
    echo "installed $bin/$name -> $lib/$file"
  else
    echo "installed $lib/$file"
  fi
done
