// echo_server: the EchoService every integration test talks to, as a
// separate process, in one of three server styles.
//
//   echo_server --socket=/tmp/x.sock [--style=sync|callback|async] [--no-shm]
//
// Listens on unix:<socket> (plain gRPC) and, unless --no-shm, attaches
// shmgrpc (handshake socket <socket>.shm). Prints "ready" on stdout when
// both are up. Exits on SIGTERM/SIGINT after shutting down cleanly.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "grpcpp/grpcpp.h"
#include "shmgrpc.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_logic.h"

namespace shmgrpc::test {
namespace {

std::atomic<bool> stop_requested{false};

void OnSignal(int) { stop_requested.store(true); }

int Main(int argc, char** argv) {
  std::string socket_path;
  std::string style = "sync";
  bool with_shm = true;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (absl::StartsWith(arg, "--socket=")) {
      socket_path = arg.substr(9);
    } else if (absl::StartsWith(arg, "--style=")) {
      style = arg.substr(8);
    } else if (arg == "--no-shm") {
      with_shm = false;
    } else {
      std::fprintf(stderr,
                   "usage: %s --socket=PATH [--style=sync|callback|async] "
                   "[--no-shm]\nunknown flag: %s\n",
                   argv[0], arg.c_str());
      return 2;
    }
  }
  if (socket_path.empty() ||
      (style != "sync" && style != "callback" && style != "async")) {
    std::fprintf(stderr,
                 "usage: %s --socket=PATH [--style=sync|callback|async] "
                 "[--no-shm]\n",
                 argv[0]);
    return 2;
  }
  signal(SIGTERM, OnSignal);
  signal(SIGINT, OnSignal);
  const std::string target = "unix:" + socket_path;
  unlink(socket_path.c_str());

  SyncEchoService sync_service;
  CallbackEchoService callback_service;
  std::unique_ptr<AsyncEchoServer> async_server;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(target, grpc::InsecureServerCredentials());
  builder.SetMaxReceiveMessageSize(-1);
  if (style == "sync") {
    builder.RegisterService(&sync_service);
  } else if (style == "callback") {
    builder.RegisterService(&callback_service);
  } else {
    async_server = std::make_unique<AsyncEchoServer>(&builder);
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    std::fprintf(stderr, "cannot listen on %s\n", target.c_str());
    return 1;
  }
  if (async_server) async_server->Run();
  std::unique_ptr<ShmServer> shm;
  if (with_shm) {
    absl::StatusOr<std::unique_ptr<ShmServer>> started =
        ShmServer::Start(server.get(), target);
    if (!started.ok()) {
      std::fprintf(stderr, "shm: %s\n", started.status().ToString().c_str());
      return 1;
    }
    shm = std::move(*started);
  }
  std::printf("ready\n");
  std::fflush(stdout);
  while (!stop_requested.load()) usleep(10000);
  if (shm) shm->Shutdown();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (async_server) async_server->Stop();
  return 0;
}

}  // namespace
}  // namespace shmgrpc::test

int main(int argc, char** argv) { return shmgrpc::test::Main(argc, argv); }
