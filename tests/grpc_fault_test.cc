// Peers die and come back: SIGKILL of the server or the client during the
// handshake, a unary call and a stream; a server restarted under a client
// that keeps calling. Every case ends with the right status, no hang, and no
// block left in use on the survivor.
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "shmgrpc.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_fixture.h"
#include "tests/echo_logic.h"
#include "tests/server_process.h"

namespace shmgrpc::test {
namespace {

using testing::ChildProcess;
using testing::RunfilePath;
using testing::ServerProcess;
using testing::StopProcess;

// How long "promptly" is: far below every deadline used here (30 s).
constexpr absl::Duration kPrompt = absl::Seconds(2);

int ConnectTo(const std::string& path) {
  const int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (connect(sock, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(sock);
    return -1;
  }
  return sock;
}

// True once the server has exactly one call in flight and its handler is
// holding it (within 5 s). A call cancelled before a handler took it never
// reaches one, so a test about what the handler sees must wait for this.
bool OneCallActive(const std::string& target) {
  return WaitFor(
      [&] {
        const ServerStatsReply stats = FetchServerStats(target);
        return stats.calls_active() == 1 && stats.handlers_hanging() == 1;
      },
      absl::Seconds(5));
}

// ---- the server dies -------------------------------------------------------

TEST(ServerDeathTest, KilledDuringUnaryCallEndsItUnavailablePromptly) {
  ServerProcess server("sync");
  ASSERT_TRUE(server.status().ok()) << server.status();
  auto channel = CreateChannel(server.target());
  auto stub = EchoService::NewStub(channel);

  HangingCall call(stub.get(), absl::Seconds(30));
  ASSERT_TRUE(OneCallActive(server.target()));
  const absl::Time killed_at = absl::Now();
  server.Kill();
  const bool prompt = WaitFor([&] { return call.returned(); }, kPrompt);
  call.Join();
  EXPECT_TRUE(prompt) << "the call waited for its deadline";
  EXPECT_EQ(call.status().error_code(), grpc::StatusCode::UNAVAILABLE)
      << call.status().error_message();
  std::printf("unary ended %s after the kill\n",
              absl::FormatDuration(call.returned_at() - killed_at).c_str());

  const ClientStats stats = *GetChannelStats(channel.get());
  EXPECT_EQ(stats.calls_on_shm, 1u);
  EXPECT_EQ(stats.sessions_closed, 1u);
  EXPECT_EQ(stats.calls_aborted_by_close, 1u);
  EXPECT_FALSE(stats.session_alive);
  EXPECT_EQ(stats.session.arena.blocks_in_use, 0u) << "leaked blocks";
  // The channel lives on (reconnecting): the dead session's arenas do not.
  ExpectNoShmHeldBy(getpid(), "the client");
}

TEST(ServerDeathTest, KilledDuringStreamEndsItUnavailablePromptly) {
  ServerProcess server("sync");
  ASSERT_TRUE(server.status().ok()) << server.status();
  auto channel = CreateChannel(server.target());
  auto stub = EchoService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(30)));
  auto stream = stub->Bidi(&context);
  for (int i = 0; i < 50; ++i) {
    EchoRequest request;
    FillRequest(&request, 16 << 10, i);
    EchoResponse response;
    ASSERT_TRUE(stream->Write(request));
    ASSERT_TRUE(stream->Read(&response));
    ASSERT_EQ(response.seq(), i);
  }
  server.Kill();
  const absl::Time killed_at = absl::Now();
  EchoResponse response;
  EXPECT_FALSE(stream->Read(&response));
  const grpc::Status status = stream->Finish();
  const absl::Duration took = absl::Now() - killed_at;
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << status.error_message();
  EXPECT_LT(took, kPrompt);
  const ClientStats stats = *GetChannelStats(channel.get());
  EXPECT_EQ(stats.calls_aborted_by_close, 1u);
  EXPECT_EQ(stats.session.arena.blocks_in_use, 0u) << "leaked blocks";
}

// A stand-in for a server that dies mid-handshake: it accepts on the shm
// socket, reads the hello, and drops the connection (what the kernel does
// for a SIGKILLed process), or says nothing at all.
class FakeHandshakeServer {
 public:
  FakeHandshakeServer(const std::string& path, bool answer_nothing)
      : path_(path) {
    listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    unlink(path.c_str());
    bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(listen_fd_, 16);
    thread_ = std::thread([this, answer_nothing] {
      for (;;) {
        const int sock = accept(listen_fd_, nullptr, nullptr);
        if (sock < 0) return;
        ++accepted_;
        char hello[8];
        if (read(sock, hello, sizeof(hello)) < 0) {
          close(sock);
          continue;
        }
        if (answer_nothing) {
          held_.push_back(sock);
        } else {
          close(sock);
        }
      }
    });
  }
  ~FakeHandshakeServer() {
    shutdown(listen_fd_, SHUT_RDWR);
    thread_.join();
    close(listen_fd_);
    for (int sock : held_) close(sock);
    unlink(path_.c_str());
  }
  int accepted() const { return accepted_; }

 private:
  std::string path_;
  int listen_fd_;
  std::thread thread_;
  std::atomic<int> accepted_{0};
  std::vector<int> held_;
};

class HandshakeDeathTest : public ::testing::TestWithParam<bool> {};

TEST_P(HandshakeDeathTest, ServerGoneMidHandshakeLeavesCallsOnThePlainPath) {
  // A plain server on the address, and a shm socket that fails the
  // handshake: the channel must not hang, and calls must still work.
  ServerProcess plain("sync", {"--no-shm"});
  ASSERT_TRUE(plain.status().ok()) << plain.status();
  FakeHandshakeServer fake(plain.socket_path() + ".shm", GetParam());
  const absl::Time start = absl::Now();
  auto channel = CreateChannel(plain.target());
  const absl::Duration connect_took = absl::Now() - start;
  EXPECT_LT(connect_took, absl::Seconds(1) + absl::Milliseconds(500))
      << "longer than the handshake timeout";
  auto stub = EchoService::NewStub(channel);
  for (int i = 0; i < 20; ++i) {
    EchoResponse response;
    const grpc::Status status = UnaryEcho(stub.get(), 1024, i, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_TRUE(PayloadIntact(response));
  }
  const ClientStats stats = *GetChannelStats(channel.get());
  EXPECT_EQ(stats.calls_on_shm, 0u);
  EXPECT_EQ(stats.calls_plain_no_session, 20u);
  EXPECT_GE(fake.accepted(), 1);
  std::printf("handshake %s: channel ready in %s\n",
              GetParam() ? "silent" : "dropped",
              absl::FormatDuration(connect_took).c_str());
}

INSTANTIATE_TEST_SUITE_P(DroppedOrSilent, HandshakeDeathTest,
                         ::testing::Values(false, true));

// ---- the client dies -------------------------------------------------------

// Waits until the server has no session, no call and no block in use left.
// The one client that went away left nothing behind on the server.
void ExpectServerCleanedUp(const std::string& target) {
  EXPECT_EQ(ExpectServerIdle(target).sessions_closed(), 1u);
}

// Per server style: the async echo server waits for AsyncNotifyWhenDone
// instead of polling IsCancelled() (which crashed it before that tag).
class ClientDeathByStyleTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ClientDeathByStyleTest, KilledDuringUnaryCallIsCancelledAndCleanedUp) {
  ServerProcess server(GetParam());
  ASSERT_TRUE(server.status().ok()) << server.status();
  ChildProcess client({RunfilePath("tests/echo_client"),
                       "--target=" + server.target(), "--mode=hang-unary"},
                      "calling");
  ASSERT_TRUE(client.status().ok()) << client.status();
  ASSERT_TRUE(OneCallActive(server.target()));
  client.Kill();
  ExpectServerCleanedUp(server.target());
  ExpectNoShmHeldBy(server.pid(), "the server");
  const ServerStatsReply stats = FetchServerStats(server.target());
  EXPECT_EQ(stats.calls_cancelled_by_close(), 1u);
  EXPECT_TRUE(WaitFor(
      [&] {
        return FetchServerStats(server.target()).cancellations_seen() == 1;
      },
      absl::Seconds(5)))
      << "the handler never saw IsCancelled()";
  ExpectServerStillServesShm(server.target());
}

INSTANTIATE_TEST_SUITE_P(AllServerStyles, ClientDeathByStyleTest,
                         ::testing::Values("sync", "callback", "async"));

TEST(ClientDeathTest, KilledMidStreamIsCancelledAndEveryBlockReclaimed) {
  ServerProcess server("sync");
  ASSERT_TRUE(server.status().ok()) << server.status();
  ChildProcess client(
      {RunfilePath("tests/echo_client"), "--target=" + server.target(),
       "--mode=stream", "--size=65536"},
      "in-call");
  ASSERT_TRUE(client.status().ok()) << client.status();
  client.Kill();
  ExpectServerCleanedUp(server.target());
  EXPECT_TRUE(WaitFor(
      [&] {
        return FetchServerStats(server.target()).cancellations_seen() == 1;
      },
      absl::Seconds(5)))
      << "the Bidi handler never saw IsCancelled()";
  const ServerStatsReply stats = FetchServerStats(server.target());
  std::printf("server reclaimed %lu blocks from the killed client\n",
              static_cast<unsigned long>(stats.blocks_reclaimed()));
  ExpectServerStillServesShm(server.target());
}

TEST(ClientDeathTest, GoneMidHandshakeCostsOnlyItsConnection) {
  ServerProcess server("sync");
  ASSERT_TRUE(server.status().ok()) << server.status();
  // Half a hello, then the connection drops (as a SIGKILLed client's does).
  const int sock = ConnectTo(server.socket_path() + ".shm");
  ASSERT_GE(sock, 0);
  ASSERT_EQ(write(sock, "SSG1abcd", 8), 8);
  close(sock);
  ASSERT_TRUE(WaitFor(
      [&] {
        return FetchServerStats(server.target()).handshakes_refused() == 1;
      },
      absl::Seconds(5)));
  const ServerStatsReply stats = FetchServerStats(server.target());
  EXPECT_EQ(stats.sessions_open(), 0u);
  EXPECT_EQ(stats.sessions_accepted(), 0u);
  ExpectServerStillServesShm(server.target());
}

// ---- a client stops -------------------------------------------------------

// `flags` plus stream windows (8 MiB, 4000 messages) far larger than a
// 256 KiB arena, what inline records may queue and a socket's buffer, for
// both sides of a test whose replies must wait for room there, never for
// the window: with the default 1 MiB, replies the client had taken but not
// yet credited when it was stopped could leave the window the smaller room,
// and the next reply then waited for credit instead (CI runs failed so).
std::vector<std::string> WithWideWindows(std::vector<std::string> flags) {
  flags.push_back("--stream_window_bytes=8388608");
  flags.push_back("--stream_window_messages=4000");
  return flags;
}

// A client process stopped (SIGSTOP: a debugger, a frozen cgroup) while the
// server streams to it stops draining its ring, and the server's sends to it
// wait (up to 5 s each). The server's other clients must not wait with them:
// their calls take as long as ever.
TEST(StoppedClientTest, DoesNotStallTheServersOtherClients) {
  // 8 ring slots: the stopped client's ring fills long before its stream's
  // flow window (64 messages) would stop the handler.
  ServerProcess server("sync", {"--ring_slots=8"});
  ASSERT_TRUE(server.status().ok()) << server.status();
  ChildProcess stopped(
      {RunfilePath("tests/echo_client"), "--target=" + server.target(),
       "--mode=server-stream", "--size=1024"},
      "in-call");
  ASSERT_TRUE(stopped.status().ok()) << stopped.status();
  ASSERT_EQ(StopProcess(stopped.pid()), absl::OkStatus());
  // Resumed however the test ends: a stopped process ignores the SIGTERM
  // that ends it, and the test would hang.
  absl::Cleanup resume = [&] { kill(stopped.pid(), SIGCONT); };
  absl::SleepFor(absl::Milliseconds(200));  // its ring is full by now

  auto channel = CreateChannelWithOwnSession(server.target());
  auto stub = EchoService::NewStub(channel);
  absl::Duration slowest;
  for (int i = 0; i < 20; ++i) {
    const absl::Time start = absl::Now();
    EchoResponse response;
    const grpc::Status status = UnaryEcho(stub.get(), 4096, i, &response);
    slowest = std::max(slowest, absl::Now() - start);
    ASSERT_TRUE(status.ok()) << "call " << i << ": " << status.error_message();
    EXPECT_TRUE(PayloadIntact(response));
    EXPECT_NE(response.peer_pid(), "") << "call " << i << " went plain";
  }
  EXPECT_LT(slowest, absl::Seconds(1))
      << "a stopped client held up another client's calls";

  std::move(resume).Invoke();
  stopped.Kill();
  stub.reset();
  channel.reset();
  ExpectServerIdle(server);
  ExpectServerStillServesShm(server.target());
}

// A unary reply goes out from the handler's own thread when the client's
// ring has room; when it has none (the client stopped reading), the
// thread that must not wait leaves it to the session's completion thread,
// which waits for room. Nothing is lost or reordered: once resumed, every
// call gets its own reply.
TEST(StoppedClientTest, UnaryRepliesItHadNoRoomForArriveOnceResumed) {
  // 8 ring slots: 4 replies (message + status each) fill it.
  ServerProcess server("sync", {"--ring_slots=8"});
  ASSERT_TRUE(server.status().ok()) << server.status();
  constexpr int kCalls = 32;
  ChildProcess client({RunfilePath("tests/echo_client"),
                       "--target=" + server.target(), "--mode=unary-burst",
                       "--calls=" + std::to_string(kCalls), "--size=1024"},
                      "calling");
  ASSERT_TRUE(client.status().ok()) << client.status();
  // Stopped once its requests are in (the handlers answer after 1 s).
  ASSERT_TRUE(WaitFor(
      [&] {
        return FetchServerStats(server.target()).calls_active() == kCalls;
      },
      absl::Seconds(5)));
  ASSERT_EQ(StopProcess(client.pid()), absl::OkStatus());
  absl::Cleanup resume = [&] { kill(client.pid(), SIGCONT); };
  absl::SleepFor(absl::Milliseconds(1500));  // every reply is due by now
  const uint64_t deferred =
      FetchServerStats(server.target()).replies_deferred();
  std::printf("replies deferred while it was stopped: %lu of %d\n",
              static_cast<unsigned long>(deferred), kCalls);
  std::move(resume).Invoke();
  const std::optional<int> exit_code = client.WaitFor(absl::Seconds(5));
  ASSERT_TRUE(exit_code.has_value()) << "its calls did not end";
  EXPECT_EQ(*exit_code, 0) << "a call failed or got a wrong reply";
  EXPECT_GE(deferred, kCalls - 4u - 2u)
      << "replies the stopped client had no room for were not deferred";
  ExpectServerIdle(server);
}

// A stream's response goes out from the thread that produced it (the
// handler's Write completes the injector's read) when the client's ring has
// room; when it has none, it and every later frame of the stream wait, in
// order, for the session's completion thread. Once resumed, the client gets
// every response in order, intact, and the status.
TEST(StoppedClientTest, StreamResponsesItHadNoRoomForArriveInOrderOnceResumed) {
  // 8 ring slots and windows far larger: the ring fills, not the window.
  ServerProcess server("sync", WithWideWindows({"--ring_slots=8"}));
  ASSERT_TRUE(server.status().ok()) << server.status();
  constexpr int kReplies = 50000;  // still streaming when it is stopped
  ChildProcess client(
      WithWideWindows({RunfilePath("tests/echo_client"),
                       "--target=" + server.target(), "--mode=server-stream-n",
                       "--calls=" + std::to_string(kReplies), "--size=64"}),
      "in-call");
  ASSERT_TRUE(client.status().ok()) << client.status();
  ASSERT_EQ(StopProcess(client.pid()), absl::OkStatus());
  absl::Cleanup resume = [&] { kill(client.pid(), SIGCONT); };
  absl::SleepFor(absl::Milliseconds(500));
  const uint64_t deferred =
      FetchServerStats(server.target()).replies_deferred();
  std::printf("responses deferred while it was stopped: %lu\n",
              static_cast<unsigned long>(deferred));
  std::move(resume).Invoke();
  const std::optional<int> exit_code = client.WaitFor(absl::Seconds(60));
  ASSERT_TRUE(exit_code.has_value()) << "its stream did not end";
  EXPECT_EQ(*exit_code, 0) << "a response was lost, reordered or damaged";
  EXPECT_GE(deferred, 1u)
      << "a response the stopped client had no room for was not deferred";
  ExpectServerIdle(server);
}

// A stopped client's calls still end at the server while it stays stopped:
// a send that finds the client's ring full waits until the call's deadline,
// or 5 s for a call without one, and then the server cancels that call (its
// handler stops writing; its in-process call and blocks go). The status
// waits for the client: once resumed, its call ends at once, CANCELLED,
// instead of waiting forever for a status that was dropped.
TEST(StoppedClientTest, ServerEndsItsCallsAndTheClientHearsOnceResumed) {
  // Stream windows (both sides' smaller one counts) far larger than the
  // ring (8 slots), so that the ring fills, not the window: a stream whose
  // window is full at the stop (the client's application behind its
  // session thread, seen under load) is only flow control, as over HTTP/2,
  // and the server waits for it until the call's deadline (the next test),
  // without one for ever.
  ServerProcess server("sync",
                       {"--ring_slots=8", "--stream_window_messages=4000"});
  ASSERT_TRUE(server.status().ok()) << server.status();
  const std::string stderr_path = ::testing::TempDir() + "/stopped_client.err";
  auto server_streaming_client = [&](const std::string& deadline_ms,
                                     const std::string& stderr_to) {
    return std::make_unique<ChildProcess>(
        std::vector<std::string>{
            RunfilePath("tests/echo_client"), "--target=" + server.target(),
            "--mode=server-stream", "--size=64",
            "--stream_window_messages=4000", "--deadline_ms=" + deadline_ms},
        "in-call", stderr_to);
  };
  auto with_deadline = server_streaming_client("1500", "");
  auto without_deadline = server_streaming_client("0", stderr_path);
  ASSERT_TRUE(with_deadline->status().ok()) << with_deadline->status();
  ASSERT_TRUE(without_deadline->status().ok()) << without_deadline->status();
  // Both calls began before their "in-call" (100 replies read): at most
  // a few ms before this.
  const absl::Time stopped = absl::Now();
  for (const auto* client : {with_deadline.get(), without_deadline.get()}) {
    ASSERT_EQ(StopProcess(client->pid()), absl::OkStatus());
  }
  absl::Cleanup resume = [&] {
    kill(with_deadline->pid(), SIGCONT);
    kill(without_deadline->pid(), SIGCONT);
  };
  ASSERT_EQ(FetchServerStats(server.target()).calls_active(), 2u);

  std::optional<absl::Duration> one_left, none_left;
  while (!none_left.has_value() && absl::Now() - stopped < absl::Seconds(10)) {
    const uint64_t active = FetchServerStats(server.target()).calls_active();
    const absl::Duration since_stop = absl::Now() - stopped;
    if (active <= 1 && !one_left.has_value()) one_left = since_stop;
    if (active == 0) none_left = since_stop;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(one_left.has_value()) << "the call with a deadline never ended";
  ASSERT_TRUE(none_left.has_value()) << "the call without one never ended";
  EXPECT_LT(*one_left, absl::Milliseconds(1500 + 1000));
  EXPECT_GE(*none_left, absl::Seconds(4));
  EXPECT_LT(*none_left, absl::Seconds(5 + 2));
  std::printf(
      "server ended the stopped client's calls %s (deadline 1.5 s) "
      "and %s (none) after the stop\n",
      absl::FormatDuration(*one_left).c_str(),
      absl::FormatDuration(*none_left).c_str());

  // echo_client's server-stream mode exits 1 when its stream ends.
  std::move(resume).Invoke();
  EXPECT_EQ(with_deadline->WaitFor(absl::Seconds(3)), 1);
  EXPECT_EQ(without_deadline->WaitFor(absl::Seconds(3)), 1)
      << "the resumed client's call did not end";
  std::ifstream errors(stderr_path);
  const std::string said((std::istreambuf_iterator<char>(errors)),
                         std::istreambuf_iterator<char>());
  EXPECT_TRUE(absl::StrContains(said, "stream ended: CANCELLED")) << said;
  ExpectServerIdle(server);
  ExpectServerStillServesShm(server.target());
}

// An echo_client process reading one endless server stream from `server`
// (`flags` added), stopped (SIGSTOP) once its call is under way. Resumed
// when this goes, too: a stopped process ignores the SIGTERM that ends it,
// and a test that returned early would hang.
class StoppedStreamingClient {
 public:
  StoppedStreamingClient(const ServerProcess& server,
                         const std::vector<std::string>& flags,
                         const std::string& name)
      : stderr_path_(::testing::TempDir() + "/" + name + ".err"),
        process_(Args(server, flags), "in-call", stderr_path_) {
    if (!process_.status().ok()) return;
    stopped_at_ = absl::Now();
    stopped_ = StopProcess(process_.pid()).ok();
  }
  ~StoppedStreamingClient() { Resume(); }

  // OK once it is stopped mid-call.
  absl::Status status() const {
    if (!process_.status().ok()) return process_.status();
    if (!stopped_) return absl::InternalError("it did not stop");
    return absl::OkStatus();
  }
  absl::Time stopped_at() const { return stopped_at_; }

  // Resumes it; once its stream has ended (it then exits 1), within 3 s,
  // what it printed on stderr.
  absl::StatusOr<std::string> ResumeUntilItsStreamEnds() {
    Resume();
    const std::optional<int> exit_code = process_.WaitFor(absl::Seconds(3));
    if (!exit_code.has_value()) {
      return absl::DeadlineExceededError("its call did not end");
    }
    if (*exit_code != 1) {
      return absl::InternalError(absl::StrCat("it exited ", *exit_code));
    }
    std::ifstream errors(stderr_path_);
    return std::string((std::istreambuf_iterator<char>(errors)),
                       std::istreambuf_iterator<char>());
  }

 private:
  static std::vector<std::string> Args(const ServerProcess& server,
                                       const std::vector<std::string>& flags) {
    std::vector<std::string> args = {RunfilePath("tests/echo_client"),
                                     "--target=" + server.target(),
                                     "--mode=server-stream"};
    args.insert(args.end(), flags.begin(), flags.end());
    return args;
  }
  void Resume() {
    if (stopped_) kill(process_.pid(), SIGCONT);
    stopped_ = false;
  }

  const std::string stderr_path_;
  ChildProcess process_;
  absl::Time stopped_at_;
  bool stopped_ = false;
};

// How long after `since` (a client's stop) `server` had no shm session
// open, if it came to that within `timeout`; printed.
std::optional<absl::Duration> NoSessionOpenAfter(const ServerProcess& server,
                                                 absl::Time since,
                                                 absl::Duration timeout) {
  if (!WaitFor(
          [&] {
            return FetchServerStats(server.target()).sessions_open() == 0;
          },
          timeout)) {
    return std::nullopt;
  }
  const absl::Duration after = absl::Now() - since;
  std::printf("server closed the session %s after the stop\n",
              absl::FormatDuration(after).c_str());
  return after;
}

// A client still stopped when its server's stalled_peer_timeout (here 1 s)
// has passed with a status waiting for it loses its session instead: the
// server forgets it and frees its memory, and the resumed client's call
// (without a deadline) ends, UNAVAILABLE, rather than waiting for that
// status.
TEST(StoppedClientTest, StoppedPastTheTimeoutItsSessionIsClosed) {
  ServerProcess server("sync",
                       {"--ring_slots=8", "--stream_window_messages=4000",
                        "--stalled_peer_timeout_ms=1000"});
  ASSERT_TRUE(server.status().ok()) << server.status();
  StoppedStreamingClient client(
      server, {"--size=64", "--stream_window_messages=4000", "--deadline_ms=0"},
      "stopped_past_timeout");
  ASSERT_TRUE(client.status().ok()) << client.status();
  ASSERT_EQ(FetchServerStats(server.target()).sessions_open(), 1u);

  // The server's write gives up after 1 s (the timeout, shorter than the
  // 5 s it waits otherwise), the call ends, its status is posted, and the
  // session closes once that has waited 1 s.
  const std::optional<absl::Duration> closed_after =
      NoSessionOpenAfter(server, client.stopped_at(), absl::Seconds(10));
  ASSERT_TRUE(closed_after.has_value())
      << "the stopped client's session was never closed";
  EXPECT_GE(*closed_after, absl::Milliseconds(1500));
  EXPECT_LT(*closed_after, absl::Seconds(5));
  EXPECT_EQ(FetchServerStats(server.target()).calls_active(), 0u);

  absl::StatusOr<std::string> said = client.ResumeUntilItsStreamEnds();
  ASSERT_TRUE(said.ok()) << said.status();
  EXPECT_TRUE(absl::StrContains(
      *said, "stream ended: shm session to the server closed"))
      << *said;
  ExpectServerIdle(server);
  ExpectServerStillServesShm(server.target());
}

// A status that cannot be kept for a stopped client (no shared memory left
// for it: the small arena is full of replies the client has not read, and
// its ring of inline ones) closes the session at once, not after
// stalled_peer_timeout (30 s by default).
TEST(StoppedClientTest, NoMemoryLeftForItsStatusClosesTheSessionAtOnce) {
  const std::string server_log = ::testing::TempDir() + "/no_memory.log";
  // Every block must be held by a frame the client has not read when the
  // status is posted. A frame that was never sent gives its block back as
  // its send fails, so none may hold one: a ring larger than the arena
  // (no frame waits for a slot with its block), and replies serialized by
  // gRPC rather than into the arena (a handler's unsent arena reply is
  // freed with the call: 1 in 16 runs left the status a block that way).
  // Nor may a block the client gave back late: it takes the server's
  // initial metadata (whose small block's page the replies then reclaim),
  // reads no reply and is stopped while it holds off. (Stopped while it
  // read, as the other tests stop theirs, its last releases could reach
  // the server after the handler's last allocation and leave the status a
  // block: once in a clean-clone ASan run. Stopped before the metadata
  // came, that block's page kept room for the status.)
  ServerProcess server(
      "sync",
      WithWideWindows(
          {"--arena_bytes=262144", "--ring_slots=64", "--no_arena_replies"}),
      "", server_log);
  ASSERT_TRUE(server.status().ok()) << server.status();
  StoppedStreamingClient client(
      server,
      WithWideWindows({"--size=32768", "--deadline_ms=1000",
                       "--in_call_after=0", "--hold_ms=1500"}),
      "stopped_no_memory");
  ASSERT_TRUE(client.status().ok()) << client.status();
  const std::optional<absl::Duration> closed_after =
      NoSessionOpenAfter(server, client.stopped_at(), absl::Seconds(10));
  ASSERT_TRUE(closed_after.has_value())
      << "the stopped client's session was never closed";
  EXPECT_LT(*closed_after, absl::Seconds(3));
  std::ifstream log(server_log);
  const std::string logged((std::istreambuf_iterator<char>(log)),
                           std::istreambuf_iterator<char>());
  EXPECT_TRUE(absl::StrContains(
      logged,
      "RESOURCE_EXHAUSTED: no shared memory for a frame its peer "
      "must not miss"))
      << logged;

  absl::StatusOr<std::string> said = client.ResumeUntilItsStreamEnds();
  ASSERT_TRUE(said.ok()) << said.status();
  ExpectServerIdle(server);
  ExpectServerStillServesShm(server.target());
}

// The same for replies that wait on the socket (inline: the server's small
// arena is full of replies the stopped client has not read): the session is
// closed once the client has read none of them for stalled_peer_timeout
// (1 s here), not after a fixed 10 s.
TEST(StoppedClientTest, InlineRepliesWaitForItNoLongerThanTheTimeout) {
  ServerProcess server("sync", WithWideWindows({"--arena_bytes=262144",
                                                "--stalled_peer_timeout_ms=1000"}));
  ASSERT_TRUE(server.status().ok()) << server.status();
  StoppedStreamingClient client(
      server, WithWideWindows({"--size=65536", "--deadline_ms=0"}),
      "stopped_inline");
  ASSERT_TRUE(client.status().ok()) << client.status();
  const std::optional<absl::Duration> closed_after =
      NoSessionOpenAfter(server, client.stopped_at(), absl::Seconds(15));
  ASSERT_TRUE(closed_after.has_value())
      << "the stopped client's session was never closed";
  EXPECT_GE(*closed_after, absl::Seconds(1));
  EXPECT_LT(*closed_after, absl::Seconds(3));
  EXPECT_GT(FetchServerStats(server.target()).inline_arena_full(), 0u)
      << "no reply went inline";
  EXPECT_EQ(FetchServerStats(server.target()).calls_active(), 0u);

  absl::StatusOr<std::string> said = client.ResumeUntilItsStreamEnds();
  ASSERT_TRUE(said.ok()) << said.status();
  ExpectServerIdle(server);
  ExpectServerStillServesShm(server.target());
}

// A stopped client's stream whose flow window is full (the server holds a
// reply for it and writes nothing: flow control, not a full ring) still ends
// at the server at its deadline, as over HTTP/2. Before, the server held the
// call, its in-process call and the reply until the client read again.
TEST(StoppedClientTest, AStreamWaitingForItsWindowEndsAtItsDeadline) {
  ServerProcess server("sync");
  ASSERT_TRUE(server.status().ok()) << server.status();
  // 64 KiB replies: the window's 1 MiB fills after 16, long before the
  // 4096-slot ring.
  StoppedStreamingClient client(server, {"--size=65536", "--deadline_ms=1000"},
                                "stopped_window_full");
  ASSERT_TRUE(client.status().ok()) << client.status();
  ASSERT_TRUE(WaitFor(
      [&] { return FetchServerStats(server.target()).calls_active() == 0; },
      absl::Seconds(5)))
      << "the server held the call past its deadline";
  const absl::Duration ended_after = absl::Now() - client.stopped_at();
  EXPECT_LT(ended_after, absl::Milliseconds(1000 + 1000));
  std::printf("server ended the call %s after the stop (deadline 1 s)\n",
              absl::FormatDuration(ended_after).c_str());
  // Its status fit in the ring: the session goes on.
  EXPECT_EQ(FetchServerStats(server.target()).sessions_open(), 1u);

  absl::StatusOr<std::string> said = client.ResumeUntilItsStreamEnds();
  ASSERT_TRUE(said.ok()) << said.status();
  EXPECT_TRUE(absl::StrContains(*said, "stream ended: Deadline Exceeded"))
      << *said;
  ExpectServerIdle(server);
  ExpectServerStillServesShm(server.target());
}

// The other way round: a client cancels a call while its server has stopped
// reading (frozen; the client's ring to it full).
//
// Starts a call on `channel` whose handler hangs, stops the server
// (SIGSTOP), fills the client's ring to it (8 slots: `channel`'s
// Options::ring_slots) with calls that give up at their 300 ms deadlines,
// and cancels the hanging call, which ends CANCELLED at the client at once.
// The server stays stopped: the caller resumes it (SIGCONT), and should
// arrange that before calling, since a failed assertion returns early.
void CancelACallWhileTheServerIsStopped(
    const ServerProcess& server,
    const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = EchoService::NewStub(channel);
  grpc::ClientContext hanging;  // no deadline: only a cancel ends it
  grpc::Status hanging_status;
  std::thread hanging_call([&] {
    EchoRequest request;
    request.set_hang(true);
    EchoResponse response;
    hanging_status = stub->Unary(&hanging, request, &response);
  });
  absl::Cleanup join = [&] {
    hanging.TryCancel();
    hanging_call.join();
  };
  ASSERT_TRUE(WaitFor(
      [&] { return FetchServerStats(server.target()).handlers_hanging() == 1; },
      absl::Seconds(5)));
  ASSERT_EQ(StopProcess(server.pid()), absl::OkStatus());
  for (int i = 0; i < 4; ++i) {
    EchoRequest request;
    FillRequest(&request, 64, i);
    EchoResponse response;
    grpc::ClientContext context;
    context.set_deadline(In(absl::Milliseconds(300)));
    EXPECT_EQ(stub->Unary(&context, request, &response).error_code(),
              grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  ASSERT_GT(GetChannelStats(channel.get())->session.ring_full_waits, 0u);
  std::move(join).Invoke();
  EXPECT_EQ(hanging_status.error_code(), grpc::StatusCode::CANCELLED);
}

// Once the server runs again, the handler of the call cancelled while it was
// stopped (CancelACallWhileTheServerIsStopped) ends.
void ExpectTheCancelledHandlerEnds(const ServerProcess& server) {
  EXPECT_TRUE(WaitFor(
      [&] { return FetchServerStats(server.target()).handlers_hanging() == 0; },
      absl::Seconds(3)))
      << "the cancelled call's handler runs on";
}

// The cancel waits for the server: once resumed, it hears of it and the
// call's handler ends, instead of running on (it was dropped after 1 s).
TEST(StoppedServerTest, ACancelReachesTheServerOnceItReadsAgain) {
  ServerProcess server("sync");
  ASSERT_TRUE(server.status().ok()) << server.status();
  Options options;
  options.ring_slots = 8;
  auto channel = CreateChannelWithOwnSession(server.target(), options);
  absl::Cleanup resume = [&] { kill(server.pid(), SIGCONT); };
  ASSERT_NO_FATAL_FAILURE(CancelACallWhileTheServerIsStopped(server, channel));
  absl::SleepFor(absl::Seconds(2));  // longer than the cancel waited before

  std::move(resume).Invoke();
  ExpectTheCancelledHandlerEnds(server);
  EXPECT_TRUE(WaitFor(
      [&] { return FetchServerStats(server.target()).calls_active() == 0; },
      absl::Seconds(3)));
  EXPECT_EQ(GetChannelStats(channel.get())->session_alive, true);
  ExpectEchoOver(channel, true, "after the server resumed");
}

// The same with the server stopped past the client's stalled_peer_timeout
// (1 s): the client closes the session instead of keeping the cancel, so
// the server, once resumed, finds the session gone and ends the call's
// handler; the channel opens a new session.
TEST(StoppedServerTest, StoppedPastTheTimeoutTheClientClosesItsSession) {
  ServerProcess server("sync");
  ASSERT_TRUE(server.status().ok()) << server.status();
  Options options;
  options.ring_slots = 8;
  options.stalled_peer_timeout = absl::Seconds(1);
  auto channel = CreateChannelWithOwnSession(server.target(), options);
  absl::Cleanup resume = [&] { kill(server.pid(), SIGCONT); };
  const absl::Time before_stop = absl::Now();
  ASSERT_NO_FATAL_FAILURE(CancelACallWhileTheServerIsStopped(server, channel));
  ASSERT_TRUE(
      WaitFor([&] { return !GetChannelStats(channel.get())->session_alive; },
              absl::Seconds(5)))
      << "the session to the stopped server was never closed";
  // Posted frames (the cancel, and those of the calls that timed out) began
  // to wait after the stop.
  const absl::Duration closed_after = absl::Now() - before_stop;
  EXPECT_GE(closed_after, absl::Seconds(1));
  std::printf("client closed its session %s after the stop\n",
              absl::FormatDuration(closed_after).c_str());

  std::move(resume).Invoke();
  ExpectTheCancelledHandlerEnds(server);
  EXPECT_TRUE(WaitFor(
      [&] { return FetchServerStats(server.target()).sessions_open() == 0; },
      absl::Seconds(3)));
  ASSERT_TRUE(
      WaitFor([&] { return GetChannelStats(channel.get())->session_alive; },
              absl::Seconds(5)))
      << "the channel opened no new session";
  ExpectEchoOver(channel, true, "on the new session");
}

// A stream without a deadline whose write waits for room in a frozen
// server's full ring holds the session's ring; a call with a deadline on
// the same session still ends at its deadline (it waited for the ring until
// the server ran again), and all goes on once the server does.
TEST(StoppedServerTest, AWriterWaitingForRoomHoldsNoOtherCallPastItsDeadline) {
  ServerProcess server("sync");
  ASSERT_TRUE(server.status().ok()) << server.status();
  Options options;
  options.ring_slots = 8;
  auto channel = CreateChannelWithOwnSession(server.target(), options);
  auto stub = EchoService::NewStub(channel);
  ASSERT_EQ(StopProcess(server.pid()), absl::OkStatus());
  // Resumed after 3 s whatever happens: a call held past its deadline
  // returns then.
  std::thread resumer([&] {
    absl::SleepFor(absl::Seconds(3));
    kill(server.pid(), SIGCONT);
  });
  grpc::ClientContext stream_context;
  auto stream = stub->Bidi(&stream_context);
  std::atomic<int> written{0};
  std::thread writer([&] {
    for (int i = 0; i < 20; ++i) {
      EchoRequest request;
      FillRequest(&request, 64, i);
      if (!stream->Write(request)) return;
      ++written;
    }
  });
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_LT(written.load(), 20) << "the writer never waited for room";

  const absl::Time start = absl::Now();
  EchoRequest request;
  FillRequest(&request, 64, 100);
  EchoResponse response;
  grpc::ClientContext context;
  context.set_deadline(In(absl::Milliseconds(300)));
  const grpc::Status status = stub->Unary(&context, request, &response);
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_LT(took, absl::Seconds(1)) << "held up by the waiting writer";
  std::printf("a call with a 300 ms deadline returned after %s\n",
              absl::FormatDuration(took).c_str());

  resumer.join();
  writer.join();
  EXPECT_EQ(written.load(), 20);
  stream->WritesDone();
  while (stream->Read(&response)) {
  }
  EXPECT_TRUE(stream->Finish().ok());
  ExpectEchoOver(channel, true, "after the server resumed");
}

// ---- orderly endings -------------------------------------------------------

// A server shut down (SIGTERM: echo_server gives calls 2 s, as a rolling
// restart would) lets the calls under way on shm finish there: unary calls
// in their handlers and a stream that keeps going, every server style. Its
// client hears of it at once and puts new calls on plain gRPC meanwhile; none
// is lost, and the client closes the drained session itself.
class GracefulShutdownTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GracefulShutdownTest, CallsUnderWayFinishOnShmAndNewCallsGoPlain) {
  ServerProcess server(GetParam());
  ASSERT_TRUE(server.status().ok()) << server.status();
  auto channel = CreateChannel(server.target());
  auto stub = EchoService::NewStub(channel);

  grpc::ClientContext stream_context;
  auto stream = stub->Bidi(&stream_context);
  int64_t seq = 0;
  auto round_trip = [&] {
    EchoRequest request;
    FillRequest(&request, 4096, seq);
    EchoResponse response;
    return stream->Write(request) && stream->Read(&response) &&
           response.seq() == seq++ && PayloadIntact(response) &&
           response.peer_pid() != "";
  };
  ASSERT_TRUE(round_trip());
  // 300 ms each: the async server runs them one after another on its one
  // thread, 1.2 s in all, within echo_server's 2 s shutdown deadline.
  constexpr int kSlowCalls = 4;
  std::vector<grpc::Status> statuses(kSlowCalls);
  std::vector<EchoResponse> responses(kSlowCalls);
  std::vector<std::thread> callers;
  absl::Cleanup join_callers = [&] {
    for (auto& caller : callers) caller.join();
  };
  for (int i = 0; i < kSlowCalls; ++i) {
    callers.emplace_back([&, i] {
      EchoRequest request;
      FillRequest(&request, 65536, i);
      request.set_delay_ms(300);
      grpc::ClientContext context;
      context.set_deadline(In(absl::Seconds(10)));
      statuses[i] = stub->Unary(&context, request, &responses[i]);
    });
  }
  ASSERT_TRUE(WaitFor(
      [&] {
        return FetchServerStats(server.target()).calls_active() ==
               kSlowCalls + 1;
      },
      absl::Seconds(5)));

  ASSERT_EQ(kill(server.pid(), SIGTERM), 0) << strerror(errno);
  ASSERT_TRUE(
      WaitFor([&] { return !GetChannelStats(channel.get())->session_alive; },
              absl::Milliseconds(500)))
      << "the client did not hear of the shutdown";
  // A new call meanwhile: plain, served by the grpc::Server still up.
  ExpectEchoOver(channel, /*over_shm=*/false, "call during the drain");
  // The stream started on shm goes on there.
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(round_trip()) << i;
  ASSERT_TRUE(stream->WritesDone());
  const grpc::Status stream_status = stream->Finish();
  EXPECT_TRUE(stream_status.ok()) << stream_status.error_message();
  std::move(join_callers).Invoke();
  for (int i = 0; i < kSlowCalls; ++i) {
    EXPECT_TRUE(statuses[i].ok()) << i << ": " << statuses[i].error_message();
    EXPECT_TRUE(PayloadIntact(responses[i])) << i;
    EXPECT_NE(responses[i].peer_pid(), "") << i << " did not finish on shm";
  }
  EXPECT_EQ(server.Stop(), 0) << "unclean server shutdown";
  const ClientStats stats = *GetChannelStats(channel.get());
  EXPECT_EQ(stats.calls_aborted_by_close, 0u);
  EXPECT_EQ(stats.sessions_drained, 1u);
  EXPECT_EQ(stats.sessions_closed, 1u);
  EXPECT_EQ(stats.session.arena.blocks_in_use, 0u);
}

INSTANTIATE_TEST_SUITE_P(ServerStyles, GracefulShutdownTest,
                         ::testing::Values("sync", "callback", "async"));

// A call still running at the shutdown deadline is cancelled then: its
// client hears UNAVAILABLE about 2 s after the SIGTERM, not at its own 30 s
// deadline, and the server exits cleanly.
TEST(ShutdownTest, CallsOutlivingTheShutdownDeadlineEndUnavailable) {
  ServerProcess server("sync");
  ASSERT_TRUE(server.status().ok()) << server.status();
  auto channel = CreateChannel(server.target());
  auto stub = EchoService::NewStub(channel);
  HangingCall call(stub.get(), absl::Seconds(30));
  ASSERT_TRUE(OneCallActive(server.target()));
  const absl::Time stop_at = absl::Now();
  EXPECT_EQ(server.Stop(), 0) << "unclean server shutdown";
  const absl::Duration stop_took = absl::Now() - stop_at;
  EXPECT_TRUE(WaitFor([&] { return call.returned(); }, kPrompt));
  call.Join();
  EXPECT_EQ(call.status().error_code(), grpc::StatusCode::UNAVAILABLE)
      << call.status().error_message();
  EXPECT_GE(call.returned_at() - stop_at, absl::Milliseconds(1500))
      << "the call was not given the shutdown's grace";
  EXPECT_LT(stop_took, absl::Seconds(4)) << "shutdown waited on the call";
  EXPECT_EQ(GetChannelStats(channel.get())->session.arena.blocks_in_use, 0u);
}

// A successor server that binds the same path while its predecessor still
// drains (a rolling restart) keeps its shm socket when the predecessor
// exits, and the client's next session is with the successor.
TEST(ShutdownTest, SuccessorOnTheSamePathKeepsItsSocketAndGetsTheClient) {
  auto old_server = std::make_unique<ServerProcess>("sync");
  ASSERT_TRUE(old_server->status().ok()) << old_server->status();
  auto channel = CreateChannel(old_server->target());
  auto stub = EchoService::NewStub(channel);
  EchoResponse response;
  ASSERT_TRUE(UnaryEcho(stub.get(), 64, 1, &response).ok());
  ASSERT_NE(response.peer_pid(), "") << "not on shm";

  ServerProcess successor("sync", {}, old_server->socket_path());
  ASSERT_TRUE(successor.status().ok()) << successor.status();
  EXPECT_EQ(old_server->Stop(), 0) << "unclean server shutdown";
  old_server.reset();
  struct stat file;
  EXPECT_EQ(stat((successor.socket_path() + ".shm").c_str(), &file), 0)
      << "the old server removed its successor's shm socket";
  // Over shm (the verified peer pid), with the old server gone: the
  // successor's session. (ServerProcess::Stop() removed the plain socket
  // file, so plain calls fail meanwhile.)
  EXPECT_TRUE(WaitFor(
      [&] {
        EchoResponse r;
        return UnaryEcho(stub.get(), 64, 2, &r).ok() && r.peer_pid() != "";
      },
      absl::Seconds(5)))
      << "the client never reached the successor over shm";
  EXPECT_EQ(GetChannelStats(channel.get())->calls_aborted_by_close, 0u);
}

// The grpc::Server shut down before its ShmServer (README says the other
// way round, but an app may not): the call in flight still ends promptly,
// the server exits cleanly, and nothing stays in use.
TEST(ShutdownTest, GrpcServerShutDownFirstStillEndsCallsAndExitsCleanly) {
  ServerProcess server("sync", {"--grpc_shutdown_first"});
  ASSERT_TRUE(server.status().ok()) << server.status();
  auto channel = CreateChannel(server.target());
  auto stub = EchoService::NewStub(channel);
  HangingCall call(stub.get(), absl::Seconds(30));
  ASSERT_TRUE(OneCallActive(server.target()));
  EXPECT_EQ(server.Stop(), 0) << "unclean server shutdown";
  EXPECT_TRUE(WaitFor([&] { return call.returned(); }, kPrompt));
  call.Join();
  // As from the in-process transport the server's shutdown closed.
  EXPECT_EQ(call.status().error_code(), grpc::StatusCode::UNAVAILABLE)
      << call.status().error_message();
  EXPECT_EQ(GetChannelStats(channel.get())->session.arena.blocks_in_use, 0u);
}

TEST(ShutdownTest, ChannelDroppedWithCallInFlightLeaksNothing) {
  ServerProcess server("sync");
  ASSERT_TRUE(server.status().ok()) << server.status();
  auto stub = EchoService::NewStub(CreateChannel(server.target()));
  {
    EchoResponse response;
    ASSERT_TRUE(UnaryEcho(stub.get(), 64, 1, &response).ok());
  }
  // Each side maps both arenas and holds its own memfd while the session
  // is up (what the checks below count).
  EXPECT_GE(ShmHeldBy(getpid()), 3);
  EXPECT_GE(ShmHeldBy(server.pid()), 3);
  grpc::Status status;
  // The call owns the last reference to the channel once `stub` moves into
  // the thread: its end destroys the channel, the session and the arenas.
  std::thread caller([&status, stub = std::move(stub)]() mutable {
    EchoRequest request;
    request.set_hang(true);
    EchoResponse response;
    grpc::ClientContext context;
    context.set_deadline(In(absl::Milliseconds(300)));
    status = stub->Unary(&context, request, &response);
    stub.reset();
  });
  caller.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ExpectServerCleanedUp(server.target());
  ExpectNoShmHeldBy(getpid(), "the client");
  ExpectNoShmHeldBy(server.pid(), "the server");
}

// ---- the server restarts ---------------------------------------------------

// True once `channel` has a session again and has made 100 calls over shm
// since it had made `shm_calls_before`.
bool BackOnShm(grpc::Channel* channel, uint64_t shm_calls_before,
               absl::Duration timeout) {
  return WaitFor(
      [&] {
        const ClientStats stats = *GetChannelStats(channel);
        return stats.session_alive &&
               stats.calls_on_shm >= shm_calls_before + 100;
      },
      timeout);
}

// Unary calls (2 KiB, 5 s deadline each) back to back on a thread of its
// own until Stop(), counted by outcome. A failure other than UNAVAILABLE is
// printed; after an UNAVAILABLE it pauses 5 ms (with no server, the plain
// path fails at once).
class BackToBackCaller {
 public:
  explicit BackToBackCaller(EchoService::Stub* stub)
      : thread_([this, stub] {
          for (int64_t i = 0; !stop_.load(); ++i) {
            EchoRequest request;
            FillRequest(&request, 2048, i);
            EchoResponse response;
            grpc::ClientContext context;
            context.set_deadline(In(absl::Seconds(5)));
            const grpc::Status status =
                stub->Unary(&context, request, &response);
            if (status.ok() && PayloadIntact(response) && response.seq() == i) {
              ++ok_;
            } else if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
              ++unavailable_;
              absl::SleepFor(absl::Milliseconds(5));
            } else {
              ++other_;
              std::fprintf(stderr, "call %ld: %d %s\n", static_cast<long>(i),
                           status.error_code(), status.error_message().c_str());
            }
          }
        }) {}
  ~BackToBackCaller() { Stop(); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  int ok() const { return ok_.load(); }
  int unavailable() const { return unavailable_.load(); }
  int other() const { return other_.load(); }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<int> ok_{0}, unavailable_{0}, other_{0};
  std::thread thread_;  // last: starts after the fields it writes exist
};

TEST(RestartTest, ClientKeepsCallingAndReturnsToShmAfterRestart) {
  auto server = std::make_unique<ServerProcess>("sync");
  ASSERT_TRUE(server->status().ok()) << server->status();
  const std::string socket_path = server->socket_path();
  auto channel = CreateChannel(server->target());
  auto stub = EchoService::NewStub(channel);
  // Shares the first channel's session (and its reconnects).
  auto second_stub = EchoService::NewStub(CreateChannel(server->target()));

  BackToBackCaller caller(stub.get());
  ASSERT_TRUE(WaitFor([&] { return caller.ok() >= 200; }, absl::Seconds(20)));
  server->Kill();
  const uint64_t shm_before = GetChannelStats(channel.get())->calls_on_shm;
  absl::SleepFor(absl::Milliseconds(300));  // the client sees it gone
  // Gone before its successor binds: its destructor removes the socket files.
  server.reset();
  server = std::make_unique<ServerProcess>("sync", std::vector<std::string>{},
                                           socket_path);
  ASSERT_TRUE(server->status().ok()) << server->status();
  const bool back_on_shm =
      BackOnShm(channel.get(), shm_before, absl::Seconds(15));
  caller.Stop();
  const ClientStats stats = *GetChannelStats(channel.get());
  EXPECT_TRUE(back_on_shm) << "calls_on_shm " << stats.calls_on_shm
                           << " before the restart " << shm_before;
  EXPECT_EQ(caller.other(), 0) << "only OK or UNAVAILABLE are acceptable";
  EXPECT_GE(stats.sessions_opened, 2u);
  EXPECT_EQ(stats.sessions_closed, 1u);
  // The channel that shared the session is back on shm too, over the one
  // session the restarted server accepted.
  EchoResponse response;
  ASSERT_TRUE(UnaryEcho(second_stub.get(), 100, 1, &response).ok());
  EXPECT_NE(response.peer_pid(), "");
  EXPECT_EQ(FetchServerStats(server->target()).sessions_accepted(), 1u);
  std::printf(
      "restart: %d ok, %d unavailable, sessions opened %lu, plain calls "
      "without a session %lu, shm calls %lu\n",
      caller.ok(), caller.unavailable(),
      static_cast<unsigned long>(stats.sessions_opened),
      static_cast<unsigned long>(stats.calls_plain_no_session),
      static_cast<unsigned long>(stats.calls_on_shm));
}

// A rolling restart: the successor binds the same path, then the old
// server shuts down gracefully while it still has a slow call to finish. A
// client calling all the while sees no failed call: calls under way finish
// on the old server's shm, calls made before the client's session with the
// successor is up go plain to the old server, and then they are on shm
// with the successor. (The slow call matters: gRPC removes a unix socket
// file when its server shuts down, the successor's by then, so plain calls
// after the old grpc::Server's shutdown would find no socket.)
TEST(RestartTest, GracefulRollingRestartFailsNoCall) {
  const std::string socket_path = testing::FreshSocketPath();
  // Not a ServerProcess: its Stop() removes the socket file, which is the
  // successor's by then.
  ChildProcess old_server({RunfilePath("tests/echo_server"),
                           "--socket=" + socket_path, "--style=sync"},
                          "ready");
  ASSERT_TRUE(old_server.status().ok()) << old_server.status();
  auto channel = CreateChannel("unix:" + socket_path);
  auto stub = EchoService::NewStub(channel);

  BackToBackCaller caller(stub.get());
  ASSERT_TRUE(WaitFor([&] { return caller.ok() >= 200; }, absl::Seconds(20)));
  ServerProcess successor("sync", {}, socket_path);
  ASSERT_TRUE(successor.status().ok()) << successor.status();
  grpc::Status slow_status;
  std::thread slow_call([&] {
    EchoRequest request;
    FillRequest(&request, 100, 0);
    request.set_delay_ms(500);
    EchoResponse response;
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(5)));
    slow_status = stub->Unary(&context, request, &response);
  });
  absl::SleepFor(absl::Milliseconds(100));  // in the old server's handler
  EXPECT_EQ(old_server.Stop(), 0) << "unclean server shutdown";
  slow_call.join();
  EXPECT_TRUE(slow_status.ok()) << slow_status.error_message();
  const uint64_t shm_after_old = GetChannelStats(channel.get())->calls_on_shm;
  const bool back_on_shm =
      BackOnShm(channel.get(), shm_after_old, absl::Seconds(10));
  caller.Stop();
  const ClientStats stats = *GetChannelStats(channel.get());
  EXPECT_TRUE(back_on_shm) << "never back on shm";
  EXPECT_EQ(caller.unavailable() + caller.other(), 0)
      << "failed calls, of " << caller.ok() << " ok";
  EXPECT_EQ(stats.calls_aborted_by_close, 0u);
  EXPECT_EQ(stats.sessions_drained, 1u);
  EXPECT_EQ(FetchServerStats(successor.target()).sessions_accepted(), 1u);
  std::printf(
      "rolling restart: %d calls ok, %d failed; plain calls without a "
      "session %lu, shm calls %lu\n",
      caller.ok(), caller.unavailable() + caller.other(),
      static_cast<unsigned long>(stats.calls_plain_no_session),
      static_cast<unsigned long>(stats.calls_on_shm));
}

}  // namespace
}  // namespace shmgrpc::test
