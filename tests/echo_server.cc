// echo_server: the EchoService every integration test talks to, as a
// separate process, in one of three server styles.
//
//   echo_server --socket=/tmp/x.sock [--style=sync|callback|async] [--no-shm]
//               [--arena_bytes=N] [--wait=notify|poll|periodic]
//               [--tcp_port=P] [--max_block_bytes=N] [--ring_slots=N]
//               [--max_sessions=N] [--stream_window_messages=N]
//               [--stream_window_bytes=N]
//               [--max_concurrent_streams=N] [--stalled_peer_timeout_ms=N]
//               [--handshake_timeout_ms=N]
//               [--max_receive_bytes=N]   (the server's limit; default none)
//
// Listens on unix:<socket> (plain gRPC), on 127.0.0.1:P too when given, and,
// unless --no-shm, attaches shmgrpc (handshake socket <socket>.shm) with the
// given Options (arena per session, wait strategy, largest block). Also
// serves ServerStatsService (the shm counters). Prints "ready" on stdout when
// both are up. Exits on SIGTERM/SIGINT after shutting down gracefully (calls
// under way get 2 s to finish). SIGUSR1 shuts down only shm, as gracefully,
// and goes on serving plain gRPC (a server whose shm went away).
#include <grp.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/support/server_interceptor.h"
#include "shmgrpc.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_logic.h"

namespace shmgrpc::test {
namespace {

std::atomic<bool> stop_requested{false};

void OnSignal(int) { stop_requested.store(true); }

std::atomic<bool> stop_shm_requested{false};

void OnStopShmSignal(int) { stop_shm_requested.store(true); }

class StatsService final : public ServerStatsService::Service {
 public:
  void set_shm(ShmServer* shm) {
    std::lock_guard<std::mutex> lock(mu_);
    shm_ = shm;
  }
  grpc::Status Get(grpc::ServerContext*, const StatsRequest*,
                   ServerStatsReply* reply) override {
    reply->set_cancellations_seen(CancellationsSeen());
    reply->set_handlers_hanging(HandlersHanging());
    std::lock_guard<std::mutex> lock(mu_);
    if (shm_ == nullptr) return grpc::Status::OK;
    const ServerStats stats = shm_->Stats();
    reply->set_sessions_accepted(stats.sessions_accepted);
    reply->set_handshakes_refused(stats.handshakes_refused);
    reply->set_sessions_open(stats.sessions_open);
    reply->set_sessions_closed(stats.sessions_closed);
    reply->set_calls_injected(stats.calls_injected);
    reply->set_calls_active(stats.calls_active);
    reply->set_busy_calls(stats.busy_calls);
    reply->set_calls_cancelled_by_close(stats.calls_cancelled_by_close);
    reply->set_streams_over_limit(stats.streams_over_limit);
    reply->set_inline_arena_full(stats.inline_arena_full);
    reply->set_inline_too_large(stats.inline_too_large);
    reply->set_blocks_in_use(stats.blocks_in_use);
    reply->set_blocks_reclaimed(stats.blocks_reclaimed);
    reply->set_messages_chained(stats.messages_chained);
    reply->set_arena_replies(stats.arena_replies);
    reply->set_replies_deferred(stats.replies_deferred);
    reply->set_worker_threads(stats.worker_threads);
    return grpc::Status::OK;
  }

 private:
  std::mutex mu_;
  ShmServer* shm_ = nullptr;  // guarded by mu_
};

// An application's server interceptor (--server_interceptor), as an authz
// or tracing one would be: it answers every call with initial metadata that
// names the method and the caller's verified shm pid ("" on plain calls).
class TaggingServerInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit TaggingServerInterceptor(grpc::experimental::ServerRpcInfo* info)
      : method_(info->method()) {}
  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    using Hook = grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(Hook::POST_RECV_INITIAL_METADATA)) {
      for (const auto& [key, value] : *methods->GetRecvInitialMetadata()) {
        if (key == "x-shmgrpc-peer-pid")
          peer_pid_.assign(value.data(), value.size());
      }
    }
    if (methods->QueryInterceptionHookPoint(Hook::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace("x-server-interceptor",
                                                 method_ + " " + peer_pid_);
    }
    methods->Proceed();
  }

 private:
  const std::string method_;
  std::string peer_pid_;
};

class TaggingServerInterceptorFactory
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new TaggingServerInterceptor(info);
  }
};

// A flag's value in milliseconds, which must be positive.
bool ParsePositiveMillis(const std::string& value, absl::Duration* out) {
  int64_t millis;
  if (!absl::SimpleAtoi(value, &millis) || millis <= 0) return false;
  *out = absl::Milliseconds(millis);
  return true;
}

constexpr char kUsage[] =
    "usage: %s --socket=PATH [--style=sync|callback|async] [--no-shm] "
    "[--arena_bytes=N] [--wait=notify|poll|periodic] [--tcp_port=P] "
    "[--max_block_bytes=N] [--ring_slots=N] [--max_receive_bytes=N] "
    "[--max_sessions=N] [--stream_window_messages=N] "
    "[--stream_window_bytes=N] [--max_concurrent_streams=N] "
    "[--stalled_peer_timeout_ms=N] "
    "[--handshake_timeout_ms=N] "
    "[--local_credentials] [--server_interceptor] [--no_arena_replies] "
    "[--abstract] "
    "[--any_uid] [--allow_uid=N] [--uid=N] [--grpc_shutdown_first]\n"
    "  --uid=N: run as uid and gid N (needs root; exit 3 if it cannot)\n"
    "  --abstract: serve on unix-abstract:PATH (the socket path as an "
    "abstract name, no file)\n";

int Main(int argc, char** argv) {
  std::string socket_path;
  std::string style = "sync";
  bool with_shm = true;
  bool local_credentials = false;   // the unix port: LocalServerCredentials
  bool server_interceptor = false;  // TaggingServerInterceptor
  bool arena_replies = true;        // ArenaReplyInterceptorFactory
  bool abstract = false;            // unix-abstract: target
  int run_as_uid = -1;
  bool grpc_shutdown_first = false;  // grpc::Server before ShmServer at exit
  Options options;
  int tcp_port = 0;
  int max_receive_bytes = -1;  // unlimited, for the large-message tests
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (absl::StartsWith(arg, "--arena_bytes=")) {
      if (!absl::SimpleAtoi(arg.substr(14), &options.arena_bytes)) {
        std::fprintf(stderr, kUsage, argv[0]);
        return 2;
      }
    } else if (absl::StartsWith(arg, "--max_block_bytes=")) {
      if (!absl::SimpleAtoi(arg.substr(18), &options.max_block_bytes)) {
        std::fprintf(stderr, kUsage, argv[0]);
        return 2;
      }
    } else if (absl::StartsWith(arg, "--max_sessions=")) {
      if (!absl::SimpleAtoi(arg.substr(15), &options.max_sessions)) {
        std::fprintf(stderr, kUsage, argv[0]);
        return 2;
      }
    } else if (absl::StartsWith(arg, "--stream_window_messages=")) {
      if (!absl::SimpleAtoi(arg.substr(25), &options.stream_window_messages) ||
          options.stream_window_messages == 0) {
        std::fprintf(stderr, kUsage, argv[0]);
        return 2;
      }
    } else if (absl::StartsWith(arg, "--stream_window_bytes=")) {
      if (!absl::SimpleAtoi(arg.substr(22), &options.stream_window_bytes) ||
          options.stream_window_bytes == 0) {
        std::fprintf(stderr, kUsage, argv[0]);
        return 2;
      }
    } else if (absl::StartsWith(arg, "--max_concurrent_streams=")) {
      if (!absl::SimpleAtoi(arg.substr(25), &options.max_concurrent_streams)) {
        std::fprintf(stderr, kUsage, argv[0]);
        return 2;
      }
    } else if (absl::StartsWith(arg, "--stalled_peer_timeout_ms=")) {
      if (!ParsePositiveMillis(arg.substr(26), &options.stalled_peer_timeout)) {
        std::fprintf(stderr, kUsage, argv[0]);
        return 2;
      }
    } else if (absl::StartsWith(arg, "--handshake_timeout_ms=")) {
      if (!ParsePositiveMillis(arg.substr(23), &options.handshake_timeout)) {
        std::fprintf(stderr, kUsage, argv[0]);
        return 2;
      }
    } else if (absl::StartsWith(arg, "--ring_slots=")) {
      if (!absl::SimpleAtoi(arg.substr(13), &options.ring_slots)) {
        std::fprintf(stderr, kUsage, argv[0]);
        return 2;
      }
    } else if (absl::StartsWith(arg, "--wait=")) {
      absl::StatusOr<shm::WaitStrategy> wait =
          shm::ParseWaitStrategy(arg.substr(7));
      if (!wait.ok()) {
        std::fprintf(stderr, kUsage, argv[0]);
        return 2;
      }
      options.wait.strategy = *wait;
    } else if (absl::StartsWith(arg, "--tcp_port=")) {
      if (!absl::SimpleAtoi(arg.substr(11), &tcp_port) || tcp_port <= 0 ||
          tcp_port > 65535) {
        std::fprintf(stderr, kUsage, argv[0]);
        return 2;
      }
    } else if (absl::StartsWith(arg, "--max_receive_bytes=")) {
      if (!absl::SimpleAtoi(arg.substr(20), &max_receive_bytes)) {
        std::fprintf(stderr, kUsage, argv[0]);
        return 2;
      }
    } else if (absl::StartsWith(arg, "--socket=")) {
      socket_path = arg.substr(9);
    } else if (absl::StartsWith(arg, "--style=")) {
      style = arg.substr(8);
    } else if (arg == "--no-shm") {
      with_shm = false;
    } else if (arg == "--local_credentials") {
      local_credentials = true;
    } else if (arg == "--server_interceptor") {
      server_interceptor = true;
    } else if (arg == "--no_arena_replies") {
      arena_replies = false;
    } else if (arg == "--abstract") {
      abstract = true;
    } else if (absl::StartsWith(arg, "--uid=")) {
      if (!absl::SimpleAtoi(arg.substr(6), &run_as_uid)) {
        std::fprintf(stderr, kUsage, argv[0]);
        return 2;
      }
    } else if (arg == "--grpc_shutdown_first") {
      grpc_shutdown_first = true;
    } else if (arg == "--any_uid") {
      options.peer_uid_policy = PeerUidPolicy::kAnyUid;
    } else if (absl::StartsWith(arg, "--allow_uid=")) {
      uid_t uid;
      if (!absl::SimpleAtoi(arg.substr(12), &uid)) {
        std::fprintf(stderr, kUsage, argv[0]);
        return 2;
      }
      options.allowed_peer_uids.push_back(uid);
    } else {
      std::fprintf(stderr, kUsage, argv[0]);
      std::fprintf(stderr, "unknown flag: %s\n", arg.c_str());
      return 2;
    }
  }
  if (socket_path.empty() || !IsEchoStyle(style)) {
    std::fprintf(stderr, kUsage, argv[0]);
    return 2;
  }
  // Before anything starts a thread: the whole process becomes that user.
  if (run_as_uid >= 0 && (setgroups(0, nullptr) != 0 ||
                          setgid(run_as_uid) != 0 || setuid(run_as_uid) != 0)) {
    std::fprintf(stderr, "cannot become uid %d: %s\n", run_as_uid,
                 strerror(errno));
    return 3;
  }
  signal(SIGTERM, OnSignal);
  signal(SIGINT, OnSignal);
  signal(SIGUSR1, OnStopShmSignal);
  const std::string target =
      (abstract ? "unix-abstract:" : "unix:") + socket_path;
  if (!abstract) unlink(socket_path.c_str());

  StatsService stats_service;
  grpc::ServerBuilder builder;
  builder.RegisterService(&stats_service);
  LiteEchoService lite_service;  // echo_lite.proto, every style
  builder.RegisterService(&lite_service);
  builder.AddListeningPort(target,
                           local_credentials
                               ? grpc::experimental::LocalServerCredentials(UDS)
                               : grpc::InsecureServerCredentials());
  if (tcp_port > 0) {
    builder.AddListeningPort("127.0.0.1:" + std::to_string(tcp_port),
                             grpc::InsecureServerCredentials());
  }
  builder.SetMaxReceiveMessageSize(max_receive_bytes);
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  if (server_interceptor) {
    interceptors.push_back(std::make_unique<TaggingServerInterceptorFactory>());
  }
  if (arena_replies) {  // last, as its contract asks
    interceptors.push_back(ArenaReplyInterceptorFactory({kLiteEchoMethod}));
  }
  if (!interceptors.empty()) {
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
  }
  EchoServiceOfStyle echo_service(style, &builder);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    std::fprintf(stderr, "cannot listen on %s\n", target.c_str());
    return 1;
  }
  echo_service.Run();
  std::unique_ptr<ShmServer> shm;
  if (with_shm) {
    absl::StatusOr<std::unique_ptr<ShmServer>> started =
        ShmServer::Start(server.get(), target, options);
    if (!started.ok()) {
      std::fprintf(stderr, "shm: %s\n", started.status().ToString().c_str());
      return 1;
    }
    shm = std::move(*started);
    stats_service.set_shm(shm.get());
  }
  std::printf("ready\n");
  std::fflush(stdout);
  while (!stop_requested.load()) {
    if (stop_shm_requested.exchange(false) && shm) {
      stats_service.set_shm(nullptr);
      shm->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
      shm.reset();
    }
    usleep(10000);
  }
  stats_service.set_shm(nullptr);
  const auto grpc_deadline =
      std::chrono::system_clock::now() + std::chrono::seconds(2);
  // The documented order is shm first; the other order must work too. Both
  // let calls under way finish until the deadline (shm's calls on shm, new
  // ones plain meanwhile).
  if (grpc_shutdown_first) server->Shutdown(grpc_deadline);
  if (shm) shm->Shutdown(grpc_deadline);
  if (!grpc_shutdown_first) server->Shutdown(grpc_deadline);
  echo_service.Stop();
  return 0;
}

}  // namespace
}  // namespace shmgrpc::test

int main(int argc, char** argv) { return shmgrpc::test::Main(argc, argv); }
