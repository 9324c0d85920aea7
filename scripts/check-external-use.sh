#!/usr/bin/env bash
# Builds a tiny application in a separate Bazel workspace that depends on
# @shmgrpc//:shmgrpc through local_repository, runs it against a test echo
# server, and checks that its call went over shared memory. Proves the
# one-line swap works from outside this repository.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/shmgrpc-consumer.XXXXXX)"
trap 'kill "${server_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

cat > "$work/WORKSPACE" <<WS
workspace(name = "consumer")
local_repository(name = "shmgrpc", path = "$repo")
# Bazel 4.2.3 asks for these even offline; reuse shmgrpc's stand-ins.
local_repository(name = "rules_cc", path = "$repo/bazel/local_repos/rules_cc")
local_repository(name = "rules_java", path = "$repo/bazel/local_repos/rules_java")
local_repository(name = "remote_coverage_tools", path = "$repo/bazel/local_repos/remote_coverage_tools")
WS
cat > "$work/BUILD" <<'B'
cc_binary(
    name = "app",
    srcs = ["app.cc"],
    deps = ["@shmgrpc//:shmgrpc", "@shmgrpc//tests:echo_proto"],
)
B
cat > "$work/app.cc" <<'CC'
#include <cstdio>
#include "grpcpp/grpcpp.h"
#include "shmgrpc.h"
#include "tests/echo.grpc.pb.h"
int main(int argc, char** argv) {
  auto channel = shmgrpc::CreateChannel(argv[1]);  // was grpc::CreateChannel
  auto stub = shmgrpc::test::EchoService::NewStub(channel);
  shmgrpc::test::EchoRequest request;
  request.set_payload("hello");
  shmgrpc::test::EchoResponse response;
  grpc::ClientContext context;
  const grpc::Status status = stub->Unary(&context, request, &response);
  const auto stats = shmgrpc::GetChannelStats(channel.get());
  std::printf("status %d, reply '%s', calls over shm: %lu\n",
              status.error_code(), response.payload().c_str(),
              static_cast<unsigned long>(stats->calls_on_shm));
  return status.ok() && response.payload() == "hello" &&
                 stats->calls_on_shm == 1
             ? 0
             : 1;
}
CC
cp "$repo/.bazelrc" "$work/.bazelrc"
(cd "$repo" && bazel build //tests:echo_server)
(cd "$work" && bazel build //:app)
socket="$work/s.sock"
"$repo/bazel-bin/tests/echo_server" --socket="$socket" > "$work/server.out" &
server_pid=$!
for _ in $(seq 100); do grep -q ready "$work/server.out" && break; sleep 0.1; done
"$work/bazel-bin/app" "unix:$socket"
(cd "$work" && bazel shutdown)
echo "external use: OK"
