// Chaos: for a few seconds per server style, up to four echo_client processes
// at a time against one echo_server with a 256 KiB arena and 8-slot rings
// (so replies often go inline): plain unary runs that must succeed, and
// streams, hanging calls and large unary runs SIGKILLed at random moments.
// The server must survive all of it and end with no session, no call and no
// block in use, still serving shm, and exit cleanly. (Written after hand-run
// loops like it found two server crashes: a session thread delivering a
// frame before the server had recorded the session, and the async test
// server polling IsCancelled() before it was valid.)
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "shmgrpc.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_fixture.h"
#include "tests/echo_logic.h"
#include "tests/server_process.h"

namespace shmgrpc::test {
namespace {

using testing::RunfilePath;
using testing::ServerProcess;

constexpr absl::Duration kChaos = absl::Seconds(6);
constexpr size_t kMaxClients = 4;

struct Client {
  pid_t pid;
  bool must_succeed;   // a plain unary run that nobody kills
  absl::Time kill_at;  // InfiniteFuture for must_succeed
  std::string what;
};

pid_t Spawn(const std::vector<std::string>& args) {
  const pid_t pid = fork();
  if (pid != 0) return pid;
  std::vector<char*> argv;
  for (const std::string& arg : args)
    argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  execv(argv[0], argv.data());
  _exit(127);
}

Client StartRandomClient(const std::string& target, std::mt19937& rng) {
  const std::string binary = RunfilePath("tests/echo_client");
  const std::string target_flag = "--target=" + target;
  auto uniform = [&](int lo, int hi) {
    return std::uniform_int_distribution<int>(lo, hi)(rng);
  };
  auto kill_in = [&](int lo_ms, int hi_ms) {
    return absl::Now() + absl::Milliseconds(uniform(lo_ms, hi_ms));
  };
  std::vector<std::string> args = {binary, target_flag};
  Client client{};
  switch (uniform(0, 3)) {
    case 0:  // small unary calls, all on shm, all must succeed
      args.push_back(absl::StrCat("--calls=", uniform(1, 100)));
      args.push_back(absl::StrCat("--size=", uniform(0, 32768)));
      client = {0, true, absl::InfiniteFuture(), "unary"};
      break;
    case 1:  // a stream of up to 70 KB messages, killed mid-stream
      args.push_back("--mode=stream");
      args.push_back(absl::StrCat("--size=", uniform(0, 70000)));
      client = {0, false, kill_in(50, 600), "stream"};
      break;
    case 2:  // a call the handler never answers, killed while it hangs
      args.push_back("--mode=hang-unary");
      client = {0, false, kill_in(50, 400), "hang-unary"};
      break;
    default:  // unary calls up to 2 MB (inline or plain), killed anywhere
      args.push_back("--calls=50");
      args.push_back(absl::StrCat("--size=", uniform(0, 2 << 20)));
      client = {0, false, kill_in(20, 600), "large unary"};
      break;
  }
  client.pid = Spawn(args);
  return client;
}

class ChaosTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ChaosTest, RandomClientsKilledMidCallLeaveTheServerClean) {
  ServerProcess server(GetParam(), {"--arena_bytes=262144", "--ring_slots=8"});
  ASSERT_TRUE(server.status().ok()) << server.status();
  // SHMGRPC_CHAOS_SEED=N replays a run (the seed is printed).
  const char* seed_env = std::getenv("SHMGRPC_CHAOS_SEED");
  const uint32_t seed =
      seed_env != nullptr
          ? static_cast<uint32_t>(std::strtoul(seed_env, nullptr, 10))
          : std::random_device{}();
  std::mt19937 rng(seed);
  SCOPED_TRACE(absl::StrCat("seed ", seed));

  std::vector<Client> live;
  int started = 0, succeeded = 0, killed = 0;
  const absl::Time end = absl::Now() + kChaos;
  const absl::Time give_up = end + absl::Seconds(60);
  while ((absl::Now() < end || !live.empty()) && absl::Now() < give_up) {
    for (auto it = live.begin(); it != live.end();) {
      if (absl::Now() >= it->kill_at) kill(it->pid, SIGKILL);
      int wait_status = 0;
      if (waitpid(it->pid, &wait_status, WNOHANG) != it->pid) {
        ++it;
        continue;
      }
      if (it->must_succeed) {
        EXPECT_TRUE(WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0)
            << it->what << " client failed: wait status " << wait_status;
        ++succeeded;
      } else {
        ++killed;
      }
      it = live.erase(it);
    }
    if (absl::Now() < end && live.size() < kMaxClients) {
      live.push_back(StartRandomClient(server.target(), rng));
      ++started;
    }
    usleep(5000);
  }
  for (const Client& client : live) {  // only if give_up struck
    ADD_FAILURE() << client.what << " client never ended";
    kill(client.pid, SIGKILL);
    waitpid(client.pid, nullptr, 0);
  }
  std::printf("[%s] seed %u: %d clients, %d plain runs succeeded, %d killed\n",
              GetParam().c_str(), seed, started, succeeded, killed);

  ExpectServerIdle(server);
  ExpectServerStillServesShm(server.target());
  EXPECT_EQ(server.Stop(), 0) << "echo_server did not exit cleanly";
}

INSTANTIATE_TEST_SUITE_P(AllServerStyles, ChaosTest,
                         ::testing::Values("sync", "callback", "async"));

}  // namespace
}  // namespace shmgrpc::test
