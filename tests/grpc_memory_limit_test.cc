// Sessions under a memory cgroup limit. Reserving an arena (fallocate) in a
// cgroup near its limit does not fail: the kernel OOM-kills the process. So
// a side without room for its arena must refuse the session, and its calls
// must go over plain gRPC, with nobody killed.
//
// Real cgroups: the test needs root and a writable memory controller (v1 or
// v2), and skips, saying why, where there is none.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/algorithm/container.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
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

constexpr uint64_t kMiB = uint64_t{1} << 20;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  const int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0)
    return absl::InternalError(absl::StrCat(path, ": ", strerror(errno)));
  const ssize_t n = write(fd, text.data(), text.size());
  const int err = errno;
  close(fd);
  if (n != static_cast<ssize_t>(text.size())) {
    return absl::InternalError(
        absl::StrCat("write ", path, ": ", strerror(err)));
  }
  return absl::OkStatus();
}

// A new child of this process's memory cgroup, limited to `limit_bytes`;
// removed again once its processes are gone.
class MemoryCgroup {
 public:
  static absl::StatusOr<std::unique_ptr<MemoryCgroup>> Create(
      uint64_t limit_bytes) {
    std::string v1_path, v2_path;
    bool have_v1 = false, have_v2 = false;
    for (absl::string_view line :
         absl::StrSplit(ReadFile("/proc/self/cgroup"), '\n')) {
      std::vector<std::string> f =
          absl::StrSplit(line, absl::MaxSplits(':', 2));
      if (f.size() != 3) continue;
      if (f[0] == "0" && f[1].empty()) {
        v2_path = f[2];
        have_v2 = true;
      } else if (absl::c_linear_search(
                     std::vector<std::string>(absl::StrSplit(f[1], ',')),
                     "memory")) {
        v1_path = f[2];
        have_v1 = true;
      }
    }
    static int counter = 0;
    const std::string name =
        absl::StrCat("/shmgrpc-test-", getpid(), "-", counter++);
    if (have_v1) {
      const std::string dir = "/sys/fs/cgroup/memory" +
                              (v1_path == "/" ? std::string() : v1_path) + name;
      if (mkdir(dir.c_str(), 0755) != 0) {
        return absl::UnavailableError(
            absl::StrCat("mkdir ", dir, ": ", strerror(errno)));
      }
      auto group = std::unique_ptr<MemoryCgroup>(new MemoryCgroup(dir));
      if (absl::Status s = WriteFile(dir + "/memory.limit_in_bytes",
                                     std::to_string(limit_bytes));
          !s.ok()) {
        return s;
      }
      return group;
    }
    if (have_v2) {
      const std::string dir =
          "/sys/fs/cgroup" + (v2_path == "/" ? std::string() : v2_path) + name;
      if (mkdir(dir.c_str(), 0755) != 0) {
        return absl::UnavailableError(
            absl::StrCat("mkdir ", dir, ": ", strerror(errno)));
      }
      auto group = std::unique_ptr<MemoryCgroup>(new MemoryCgroup(dir));
      if (!absl::StrContains(ReadFile(dir + "/cgroup.controllers"), "memory")) {
        return absl::UnavailableError("no memory controller below " + dir);
      }
      if (absl::Status s =
              WriteFile(dir + "/memory.max", std::to_string(limit_bytes));
          !s.ok()) {
        return s;
      }
      return group;
    }
    return absl::UnavailableError("no memory cgroup in /proc/self/cgroup");
  }

  ~MemoryCgroup() {
    // Exiting members may take a moment to leave.
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    while (rmdir(dir_.c_str()) != 0 && errno == EBUSY &&
           absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(20));
    }
  }

  absl::Status Add(pid_t pid) {
    return WriteFile(dir_ + "/cgroup.procs", std::to_string(pid));
  }
  const std::string& dir() const { return dir_; }

 private:
  explicit MemoryCgroup(std::string dir) : dir_(std::move(dir)) {}
  std::string dir_;
};

#define CREATE_CGROUP_OR_SKIP(var, limit)                                 \
  absl::StatusOr<std::unique_ptr<MemoryCgroup>> var##_or =                \
      MemoryCgroup::Create(limit);                                        \
  if (!var##_or.ok()) {                                                   \
    GTEST_SKIP() << "no memory cgroup to test in: " << var##_or.status(); \
  }                                                                       \
  std::unique_ptr<MemoryCgroup> var = std::move(*var##_or)

// Runs `args` in `cgroup` (it joins before exec, so everything it allocates
// is charged there) and returns its wait status.
int RunInCgroup(MemoryCgroup& cgroup, std::vector<std::string> args) {
  const std::string procs = cgroup.dir() + "/cgroup.procs";
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = open(procs.c_str(), O_WRONLY);
    const std::string self = std::to_string(getpid());
    if (fd < 0 || write(fd, self.data(), self.size()) < 0) _exit(126);
    close(fd);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

TEST(MemoryLimitTest, ClientWithoutRoomForItsArenaGoesPlainAndLives) {
  ServerProcess server("sync");
  ASSERT_TRUE(server.status().ok()) << server.status();
  // The client's arena is 64 MiB: it cannot have it under a 48 MiB limit.
  CREATE_CGROUP_OR_SKIP(cgroup, 48 * kMiB);
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
  CREATE_CGROUP_OR_SKIP(cgroup, 90 * kMiB);
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
