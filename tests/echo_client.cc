// echo_client: a separate client process for tests that need several.
//
//   echo_client --target=unix:/path [--calls=N] [--size=BYTES]
//
// Makes N unary calls over shmgrpc::CreateChannel, checks every reply
// (payload checksum, sequence, the server-verified peer pid) and exits 0 only
// if all N succeeded and all went over shared memory.
#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "grpcpp/grpcpp.h"
#include "shmgrpc.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_logic.h"

int main(int argc, char** argv) {
  std::string target;
  int calls = 100;
  size_t size = 1024;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    bool ok = true;
    if (absl::StartsWith(arg, "--target=")) {
      target = arg.substr(9);
    } else if (absl::StartsWith(arg, "--calls=")) {
      ok = absl::SimpleAtoi(arg.substr(8), &calls) && calls > 0;
    } else if (absl::StartsWith(arg, "--size=")) {
      ok = absl::SimpleAtoi(arg.substr(7), &size);
    } else {
      ok = false;
    }
    if (!ok) {
      std::fprintf(stderr,
                   "usage: %s --target=unix:/path [--calls=N] [--size=BYTES]\n"
                   "bad argument: %s\n",
                   argv[0], arg.c_str());
      return 2;
    }
  }
  if (target.empty()) {
    std::fprintf(stderr, "usage: %s --target=unix:/path [--calls=N] [--size=BYTES]\n",
                 argv[0]);
    return 2;
  }
  auto channel = shmgrpc::CreateChannel(target);
  auto stub = shmgrpc::test::EchoService::NewStub(channel);
  for (int i = 0; i < calls; ++i) {
    shmgrpc::test::EchoRequest request;
    shmgrpc::test::FillRequest(&request, size, i);
    shmgrpc::test::EchoResponse response;
    grpc::ClientContext context;
    grpc::Status status = stub->Unary(&context, request, &response);
    if (!status.ok()) {
      std::fprintf(stderr, "call %d: %s\n", i, status.error_message().c_str());
      return 1;
    }
    if (!shmgrpc::test::PayloadIntact(response) || response.seq() != i ||
        response.peer_pid() != std::to_string(getpid())) {
      std::fprintf(stderr, "call %d: wrong reply\n", i);
      return 1;
    }
  }
  const auto stats = shmgrpc::GetChannelStats(channel.get());
  if (stats->calls_on_shm != static_cast<uint64_t>(calls)) {
    std::fprintf(stderr, "only %lu of %d calls went over shm\n",
                 static_cast<unsigned long>(stats->calls_on_shm), calls);
    return 1;
  }
  return 0;
}
