#!/usr/bin/env bash
# Installs the Debian 12 packages shmgrpc builds against, if any is missing.
# Everything comes from Debian: no other download happens, ever.
set -euo pipefail

packages=(
  bazel-bootstrap        # Bazel 4.2.3
  g++
  libgrpc++-dev          # gRPC 1.51
  protobuf-compiler-grpc # grpc_cpp_plugin
  protobuf-compiler
  libprotobuf-dev        # protobuf 3.21
  libabsl-dev            # abseil 20220623
  libgtest-dev
  libgmock-dev
  libbenchmark-dev
  pkg-config
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "installing: ${missing[*]}" >&2
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
