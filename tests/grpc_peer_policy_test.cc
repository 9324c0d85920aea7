// The peer uid policy, with real processes of another user. SO_PEERCRED
// gives each side the other's uid; by default only this process's uid and
// root get a session, Options::allowed_peer_uids and kAnyUid let others in,
// and whoever is refused keeps working over plain gRPC.
//
// The client switches to uid 65534 (nobody), which needs root outside a
// user namespace: the target is tagged no-sandbox, and the test skips,
// saying why, where the switch is not allowed.
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_fixture.h"
#include "tests/peer_process.h"
#include "tests/server_process.h"

namespace shmgrpc::test {
namespace {

using testing::RunfilePath;
using testing::ServerProcess;
using testing::WaitPeer;

// Runs tests/echo_client with `args` to its end; its exit code.
int RunEchoClient(const std::vector<std::string>& args) {
  const std::string binary = RunfilePath("tests/echo_client");
  std::vector<char*> argv = {const_cast<char*>(binary.c_str())};
  for (const std::string& arg : args)
    argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = fork();  // then only exec: gRPC runs in this process
  if (pid == 0) {
    execv(binary.c_str(), argv.data());
    _exit(127);
  }
  return pid < 0 ? -1 : WaitPeer(pid);
}

// The peer uid policy, with a client process of another user (nobody,
// 65534): the default (this process's uid and root) refuses its handshake, and
// its calls go plain and succeed; kAnyUid, or the uid in allowed_peer_uids,
// lets it in and its calls go over shm.
TEST(PeerPolicyTest, AnotherUsersClientNeedsThePolicyToGetShm) {
  struct Case {
    std::vector<std::string> server_args;
    bool shm;
  };
  for (const Case& c : {Case{{}, false}, Case{{"--any_uid"}, true},
                        Case{{"--allow_uid=65534"}, true}}) {
    const std::string which =
        c.server_args.empty() ? "default" : c.server_args[0];
    ServerProcess server("sync", c.server_args);
    ASSERT_TRUE(server.status().ok()) << server.status();
    // Root's sockets are 0755; connecting needs write permission.
    ASSERT_EQ(chmod(server.socket_path().c_str(), 0777), 0);
    ASSERT_EQ(chmod((server.socket_path() + ".shm").c_str(), 0777), 0);
    const int code = RunEchoClient({"--target=" + server.target(), "--calls=20",
                                    "--uid=65534",
                                    c.shm ? "--expect=shm" : "--expect=plain"});
    if (code == 3) GTEST_SKIP() << "this process cannot switch to uid 65534";
    EXPECT_EQ(code, 0) << which;
    const ServerStatsReply stats = FetchServerStats(server.target());
    EXPECT_EQ(stats.sessions_accepted(), c.shm ? 1u : 0u) << which;
    // Refused at least once: the client retries after its reconnect
    // backoff (50 ms at first) while its plain calls run.
    if (c.shm) {
      EXPECT_EQ(stats.handshakes_refused(), 0u) << which;
    } else {
      EXPECT_GE(stats.handshakes_refused(), 1u) << which;
    }
    EXPECT_EQ(server.Stop(), 0) << which;
  }
}

// The client checks the server too (a socket another user made at the
// server's path must not get this process's requests): a server running as
// nobody is refused by a default client, whose calls go plain, and accepted
// by one that allows its uid.
TEST(PeerPolicyTest, ClientRefusesAnotherUsersServerUnlessAllowed) {
  ServerProcess server("sync", {"--uid=65534", "--allow_uid=0"});
  if (!server.status().ok()) {
    GTEST_SKIP() << "echo_server cannot run as uid 65534 here: "
                 << server.status();
  }
  for (const bool allowed : {false, true}) {
    Options options;
    if (allowed) options.allowed_peer_uids.push_back(65534);
    grpc::ChannelArguments own_session;  // options differ anyway; be explicit
    own_session.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    ExpectEchoOver(CreateChannel(server.target(), options, own_session),
                   allowed, allowed ? "server's uid allowed" : "default");
  }
  // The server let both in (it allows root); the default client closed its
  // session at once (and again at each retry of its reconnect backoff while
  // it lived: at least once), and all are closed and cleaned up by now.
  EXPECT_GE(ExpectServerIdle(server).sessions_accepted(), 2u);
  EXPECT_EQ(server.Stop(), 0) << "echo_server did not exit cleanly";
}

}  // namespace
}  // namespace shmgrpc::test
