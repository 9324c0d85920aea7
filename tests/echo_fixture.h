// EchoFixture: a gtest fixture with an echo_server process (in the style the
// test names) and a shm channel + stub to it.
#ifndef SHMGRPC_TESTS_ECHO_FIXTURE_H_
#define SHMGRPC_TESTS_ECHO_FIXTURE_H_

#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "shmgrpc.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_logic.h"
#include "tests/server_process.h"

namespace shmgrpc::test {

// The echo_server's shm counters, fetched over a plain channel (so asking
// does not change them). Fails the test on error.
inline ServerStatsReply FetchServerStats(const std::string& target) {
  auto channel =
      grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  auto stub = ServerStatsService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(5));
  ServerStatsReply reply;
  const grpc::Status status = stub->Get(&context, StatsRequest(), &reply);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return reply;
}

// A gRPC deadline `d` from now.
inline std::chrono::system_clock::time_point In(absl::Duration d) {
  return absl::ToChronoTime(absl::Now() + d);
}

// A unary call the server never answers (`hang`), made on its own thread,
// for tests that end it some other way (kill, shutdown, deadline).
class HangingCall {
 public:
  HangingCall(EchoService::Stub* stub, absl::Duration deadline)
      : thread_([this, stub, deadline] {
          EchoRequest request;
          request.set_hang(true);
          EchoResponse response;
          grpc::ClientContext context;
          context.set_deadline(In(deadline));
          status_ = stub->Unary(&context, request, &response);
          returned_at_ = absl::Now();
          returned_.store(true);
        }) {}
  ~HangingCall() { Join(); }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }
  bool returned() const { return returned_.load(); }
  // After returned() or Join().
  const grpc::Status& status() const { return status_; }
  absl::Time returned_at() const { return returned_at_; }

 private:
  std::atomic<bool> returned_{false};
  grpc::Status status_;
  absl::Time returned_at_;
  std::thread thread_;  // last: starts after the fields it writes exist
};

// Polls `condition` every 10 ms until it holds or `timeout` passes.
template <typename Condition>
bool WaitFor(Condition condition, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

// A thread that cancels `context` once echo_server at `target` holds one
// hanging call (waiting up to 5 s): a call cancelled before any handler
// took it never reaches one. Join it after the call returns.
inline std::thread CancelOnceAHandlerHangs(grpc::ClientContext* context,
                                           const std::string& target) {
  return std::thread([context, target] {
    WaitFor([&] { return FetchServerStats(target).handlers_hanging() == 1; },
            absl::Seconds(5));
    context->TryCancel();
  });
}

// Waits (up to 5 s) until the server has no shm session, no call, no block
// in use and no handshake or completion thread left (finished ones are
// joined at once, not at the next connection), failing the test otherwise;
// returns its last counters.
inline ServerStatsReply ExpectServerIdle(const std::string& target) {
  ServerStatsReply stats;
  const bool idle = WaitFor(
      [&] {
        stats = FetchServerStats(target);
        return stats.sessions_open() == 0 && stats.calls_active() == 0 &&
               stats.blocks_in_use() == 0 && stats.worker_threads() == 0;
      },
      absl::Seconds(5));
  EXPECT_TRUE(idle) << "sessions_open=" << stats.sessions_open()
                    << " calls_active=" << stats.calls_active()
                    << " blocks_in_use=" << stats.blocks_in_use()
                    << " worker_threads=" << stats.worker_threads();
  return stats;
}

// Open descriptors of process `pid` now (/proc/PID/fd) whose target starts
// with `target_prefix` (all when empty), or -1 when they cannot be listed.
inline int FdsOf(pid_t pid, const std::string& target_prefix = "") {
  std::error_code error;
  int count = 0;
  for (std::filesystem::directory_iterator it(
           "/proc/" + std::to_string(pid) + "/fd", error);
       !error && it != std::filesystem::directory_iterator();
       it.increment(error)) {
    if (target_prefix.empty()) {
      ++count;
      continue;
    }
    std::error_code unreadable;
    const std::string target =
        std::filesystem::read_symlink(it->path(), unreadable).string();
    if (!unreadable && target.rfind(target_prefix, 0) == 0) ++count;
  }
  return error ? -1 : count;
}

// Threads of process `pid` now (/proc/PID/status), or -1.
inline int ThreadsOf(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    int threads;
    if (absl::StartsWith(line, "Threads:") &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(line.substr(8)),
                         &threads)) {
      return threads;
    }
  }
  return -1;
}

// shmgrpc's shared memory that process `pid` holds now: mappings of its
// memfds (/proc/PID/maps) and descriptors of them (/proc/PID/fd).
inline int ShmHeldBy(pid_t pid) {
  int held = 0;
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  for (std::string line; std::getline(maps, line);) {
    if (line.find("/memfd:shmgrpc-") != std::string::npos) ++held;
  }
  return held + std::max(0, FdsOf(pid, "/memfd:shmgrpc-"));
}

// Waits (up to 5 s) until `pid` holds no shmgrpc shared memory (its
// sessions' arenas unmapped and their memfds closed), failing the test
// otherwise; `who` names it.
inline void ExpectNoShmHeldBy(pid_t pid, const std::string& who) {
  int held = 0;
  EXPECT_TRUE(WaitFor(
      [&] {
        held = ShmHeldBy(pid);
        return held == 0;
      },
      absl::Seconds(5)))
      << who << " still holds " << held << " shm mappings and fds";
}

// ExpectServerIdle, and the server process holds no shm mappings or memfds.
inline ServerStatsReply ExpectServerIdle(const testing::ServerProcess& server) {
  ServerStatsReply stats = ExpectServerIdle(server.target());
  ExpectNoShmHeldBy(server.pid(), "the idle server");
  return stats;
}

// One Unary echo of a `size`-byte checksummed payload, 10 s deadline.
inline grpc::Status UnaryEcho(EchoService::Stub* stub, size_t size, int64_t seq,
                              EchoResponse* response) {
  EchoRequest request;
  FillRequest(&request, size, seq);
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(10)));
  return stub->Unary(&context, request, response);
}

// The same, with the request gzipped and the reply gzipped by the server.
inline grpc::Status CompressedUnaryEcho(EchoService::Stub* stub, size_t size,
                                        int64_t seq, EchoResponse* response) {
  EchoRequest request;
  FillRequest(&request, size, seq);
  request.set_compress_reply(true);
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(10)));
  context.set_compression_algorithm(GRPC_COMPRESS_GZIP);
  return stub->Unary(&context, request, response);
}

// A channel with a session of its own (a new handshake), not joining the
// session of another channel of this process to the same server.
inline std::shared_ptr<grpc::Channel> CreateChannelWithOwnSession(
    const std::string& target, const Options& options = Options()) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return CreateChannel(target, options, args);
}

// One 4 KiB unary echo on `channel` succeeds, intact, and went over shm iff
// `over_shm`: the server-verified peer pid comes only with shm, and the
// channel counts it. `what` names the case in failure messages.
inline void ExpectEchoOver(const std::shared_ptr<grpc::Channel>& channel,
                           bool over_shm, const std::string& what = "") {
  const uint64_t before = GetChannelStats(channel.get())->calls_on_shm;
  auto stub = EchoService::NewStub(channel);
  EchoResponse response;
  const grpc::Status status = UnaryEcho(stub.get(), 4096, 7, &response);
  ASSERT_TRUE(status.ok()) << what << ": " << status.error_message();
  EXPECT_TRUE(PayloadIntact(response)) << what;
  EXPECT_EQ(response.peer_pid() != "", over_shm) << what;
  EXPECT_EQ(GetChannelStats(channel.get())->calls_on_shm - before,
            over_shm ? 1u : 0u)
      << what;
}

// A fresh shm session's 4 KiB unary call succeeds, intact, over shm.
inline void ExpectServerStillServesShm(const std::string& target) {
  ExpectEchoOver(CreateChannelWithOwnSession(target), true, "fresh session");
}

// `Base` is ::testing::Test or ::testing::TestWithParam<std::string> (the
// parameter is then the server style).
template <typename Base>
class EchoFixtureBase : public Base {
 protected:
  virtual std::string ServerStyle() = 0;
  // Further echo_server flags.
  virtual std::vector<std::string> ServerArgs() { return {}; }

  void SetUp() override {
    server_ =
        std::make_unique<testing::ServerProcess>(ServerStyle(), ServerArgs());
    ASSERT_TRUE(server_->status().ok()) << server_->status();
    channel_ = CreateChannel(server_->target());
    stub_ = EchoService::NewStub(channel_);
  }
  void TearDown() override {
    // The channel goes first: a gRPC server (with shm or without) whose
    // plain client is still connected when it exits often waits out a
    // 10 s timer in grpc_shutdown.
    stub_.reset();
    channel_.reset();
    // With its channels gone, this process keeps no shared memory.
    ExpectNoShmHeldBy(getpid(), "the client, its channels gone");
    // A server that crashed mid-test would otherwise go unnoticed.
    if (server_ != nullptr && server_->status().ok()) {
      EXPECT_EQ(server_->Stop(), 0) << "echo_server did not exit cleanly";
    }
  }
  ClientStats Stats() { return *GetChannelStats(channel_.get()); }
  uint64_t CallsOnShm() { return Stats().calls_on_shm; }

  std::unique_ptr<testing::ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<EchoService::Stub> stub_;
};

// Parameterized by server style.
class EchoStyleTest
    : public EchoFixtureBase<::testing::TestWithParam<std::string>> {
 protected:
  std::string ServerStyle() override { return GetParam(); }
};

// Against a sync server.
class EchoTest : public EchoFixtureBase<::testing::Test> {
 protected:
  std::string ServerStyle() override { return "sync"; }
};

}  // namespace shmgrpc::test

#endif  // SHMGRPC_TESTS_ECHO_FIXTURE_H_
