// Sessions under a memory cgroup limit. Reserving an arena (fallocate) in a
// cgroup near its limit does not fail: the kernel OOM-kills the process. So
// a side without room for its arena must refuse the session, and its calls
// must go over plain gRPC, with nobody killed.
//
// Real cgroups: the test needs root and a writable memory controller (v1 or
// v2), and skips, saying why, where there is none.
#include <sys/wait.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "shmgrpc.h"
#include "tests/cgroup.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_fixture.h"
#include "tests/echo_logic.h"
#include "tests/server_process.h"

namespace shmgrpc::test {
namespace {

using testing::RunfilePath;
using testing::RunInCgroup;
using testing::ServerProcess;

constexpr uint64_t kMiB = uint64_t{1} << 20;

TEST(MemoryLimitTest, ClientWithoutRoomForItsArenaGoesPlainAndLives) {
  ServerProcess server("sync");
  ASSERT_TRUE(server.status().ok()) << server.status();
  // The client's arena is 64 MiB: it cannot have it under a 48 MiB limit.
  CREATE_CGROUP_OR_SKIP(cgroup, "memory", 48 * kMiB);
  const int status = RunInCgroup(
      *cgroup, {RunfilePath("tests/echo_client"), "--target=" + server.target(),
                "--calls=50", "--expect=plain"});
  ASSERT_FALSE(WIFSIGNALED(status))
      << "the client was killed by signal " << WTERMSIG(status)
      << " (9: the cgroup's OOM killer)";
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "not all 50 calls succeeded over plain gRPC";
  // It gave up before connecting: the server never saw it.
  const ServerStatsReply stats = FetchServerStats(server.target());
  EXPECT_EQ(stats.sessions_accepted(), 0u);
  EXPECT_EQ(stats.handshakes_refused(), 0u);
  EXPECT_EQ(server.Stop(), 0) << "echo_server did not exit cleanly";
}

TEST(MemoryLimitTest, ServerRefusesTheSessionThatWouldNotFitAndLives) {
  // Server arenas of 32 MiB under a 90 MiB limit: two sessions fit with the
  // 16 MiB reserve, a third does not (and would cross the limit).
  ServerProcess server("sync", {"--arena_bytes=" + std::to_string(32 * kMiB)});
  ASSERT_TRUE(server.status().ok()) << server.status();
  CREATE_CGROUP_OR_SKIP(cgroup, "memory", 90 * kMiB);
  ASSERT_TRUE(cgroup->Add(server.pid()).ok());

  // Three sessions (channels of one process would share one otherwise).
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < 3; ++i) {
    channels.push_back(CreateChannelWithOwnSession(server.target()));
    auto stub = EchoService::NewStub(channels.back());
    EchoResponse response;
    const grpc::Status status = UnaryEcho(stub.get(), 4096, i, &response);
    ASSERT_TRUE(status.ok()) << i << ": " << status.error_message();
    EXPECT_TRUE(PayloadIntact(response));
    EXPECT_EQ(GetChannelStats(channels.back().get())->calls_on_shm,
              i < 2 ? 1u : 0u)
        << "channel " << i;
  }
  EXPECT_EQ(FetchServerStats(server.target()).sessions_open(), 2u);
  // The refusal reaches the client just before the server counts it.
  EXPECT_TRUE(WaitFor(
      [&] {
        return FetchServerStats(server.target()).handshakes_refused() >= 1;
      },
      absl::Seconds(5)));

  // Once the first channel is gone, its arena is freed and the third
  // channel's reconnect finds room.
  channels.front().reset();
  auto stub = EchoService::NewStub(channels.back());
  EXPECT_TRUE(WaitFor(
      [&] {
        EchoResponse response;
        return UnaryEcho(stub.get(), 4096, 9, &response).ok() &&
               GetChannelStats(channels.back().get())->calls_on_shm > 0;
      },
      absl::Seconds(10)))
      << "the third channel never got a session";
  channels.clear();
  stub.reset();
  ExpectServerIdle(server);
  EXPECT_EQ(server.Stop(), 0)
      << "echo_server was killed or did not exit cleanly";
}

}  // namespace
}  // namespace shmgrpc::test
