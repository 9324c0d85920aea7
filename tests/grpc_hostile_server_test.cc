// A hostile shm server: it completes the handshake like a real one, then
// answers every call with random frames — initial metadata, replies (valid,
// garbage, chunked without end), statuses (valid, out of range, garbage),
// credits of any value, unknown frame types — and sends frames for streams
// that do not exist. The client runs in the application's process, so
// whatever a server sends, no call may hang past its deadline (sync,
// callback and completion-queue API), nothing may
// crash (ASan checks the reads in CI), and every block must come home: the
// client's, which the server releases at once, and the server's, which the
// client must release whatever they carried.
//
// The server is a thread of this test process: the unix socket, memfds and
// rings are real, only its behaviour is scripted. Nothing serves the plain
// target, so a call that went plain would fail at once; the test checks
// that every call went over shm.
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "codec/call_frames.h"
#include "codec/frame_type.h"
#include "gtest/gtest.h"
#include "shmgrpc.h"
#include "tests/call_done.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_fixture.h"
#include "tests/echo_logic.h"
#include "tests/server_process.h"
#include "transport/flow_window.h"
#include "transport/handshake.h"
#include "transport/session.h"

namespace shmgrpc::test {
namespace {

using codec::FrameType;
using transport::Session;

// Accepts one client and answers each of its calls, from a thread of its
// own (a session thread must not wait for ring space): with random frames,
// or with a flood of valid replies that ignores the client's window.
class HostileServer {
 public:
  enum class Answer {
    kRandomFrames,
    // A unary call gets two replies, a stream kFloodReplies; no status.
    kFlood,
  };
  static constexpr int kFloodReplies = 200;
  struct Call {
    uint64_t stream = 0;
    bool unary = false;
  };

  HostileServer(const std::string& shm_path, uint32_t seed,
                Answer answer = Answer::kRandomFrames)
      : answer_(answer),
        random_(seed),
        accept_thread_([this, shm_path] { Serve(shm_path); }) {}
  ~HostileServer() { Stop(); }

  // Waits (up to 5 s) for the session; false if none came.
  bool WaitForSession() {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(5), [&] {
      return session_ != nullptr || failed_;
    }) && session_ != nullptr;
  }
  // Blocks of the server's arena the client still holds.
  uint64_t BlocksHeldByClient() {
    std::lock_guard<std::mutex> lock(mu_);
    return session_ ? session_->Stats().arena.blocks_in_use : 0;
  }
  uint64_t calls_answered() const { return calls_answered_.load(); }
  // The receive window the last stream's headers advertised (their aux).
  uint64_t last_advertised_window() const {
    return last_advertised_window_.load();
  }
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (listen_fd_ >= 0) ::shutdown(listen_fd_, SHUT_RDWR);
    if (accept_thread_.joinable()) accept_thread_.join();
    if (responder_.joinable()) responder_.join();
    if (session_) session_->Shutdown();
    if (listen_fd_ >= 0) close(listen_fd_);
    listen_fd_ = -1;
  }

 private:
  void Serve(const std::string& shm_path) {
    absl::StatusOr<int> listening = transport::ListenUnix(shm_path);
    if (!listening.ok()) {
      Fail();
      return;
    }
    listen_fd_ = *listening;
    const int sock = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (sock < 0) {
      Fail();
      return;
    }
    absl::StatusOr<transport::Handshaken> handshaken =
        transport::ServerHandshake(sock, Options());
    if (!handshaken.ok()) {
      Fail();
      return;
    }
    std::shared_ptr<Session> session = Session::Create(
        std::move(*handshaken),
        [this](const shm::ReceivedMessage& frame) {
          const bool headers = frame.descriptor.type ==
                               static_cast<uint16_t>(FrameType::kCallHeaders);
          const Call call{frame.descriptor.tag, (frame.descriptor.flags &
                                                 codec::kUnaryCallFlag) != 0};
          session_->Release(frame);
          if (!headers) return;
          if (!call.unary) last_advertised_window_ = frame.descriptor.aux;
          std::lock_guard<std::mutex> lock(mu_);
          calls_.push_back(call);
          cv_.notify_all();
        },
        [](const absl::Status&) {});
    {
      std::lock_guard<std::mutex> lock(mu_);
      session_ = session;
    }
    if (!session->Start().ok()) {
      Fail();
      return;
    }
    cv_.notify_all();
    responder_ = std::thread([this] { Respond(); });
  }

  void Fail() {
    std::lock_guard<std::mutex> lock(mu_);
    failed_ = true;
    cv_.notify_all();
  }

  std::string Bytes(size_t max) {
    std::string out(random_() % (max + 1), '\0');
    for (char& c : out) c = static_cast<char>(random_());
    return out;
  }

  void Respond() {
    for (;;) {
      Call call;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || !calls_.empty(); });
        if (stopping_) return;
        call = calls_.front();
        calls_.pop_front();
      }
      if (answer_ == Answer::kFlood) {
        Flood(call);
      } else {
        const int frames = 1 + random_() % 6;
        for (int i = 0; i < frames; ++i) SendRandomFrame(call.stream);
      }
      calls_answered_.fetch_add(1);
    }
  }

  void Flood(const Call& call) {
    EchoResponse response;
    response.set_payload("flood");
    const std::string reply = response.SerializeAsString();
    const int replies = call.unary ? 2 : kFloodReplies;
    for (int i = 0; i < replies; ++i) {
      session_
          ->SendFrame(FrameType::kMessage, call.stream, reply,
                      absl::Now() + absl::Seconds(1))
          .IgnoreError();
    }
  }

  void SendRandomFrame(uint64_t call_stream) {
    // Mostly the call's own stream; sometimes one that does not exist.
    const uint64_t stream = random_() % 8 == 0
                                ? call_stream + 2 * (1 + random_() % 4)
                                : call_stream;
    const absl::Time deadline = absl::Now() + absl::Seconds(1);
    Session& session = *session_;
    switch (random_() % 9) {
      case 0:
        session
            .SendFrame(FrameType::kInitialMetadata, stream,
                       random_() % 3 == 0
                           ? Bytes(64)
                           : codec::EncodeMetadata({{"x-k", "v"}}),
                       deadline)
            .IgnoreError();
        break;
      case 1:
      case 2:
      case 3: {
        EchoResponse response;
        response.set_seq(random_() % 100);
        response.set_payload(Bytes(4096));
        const uint16_t flags[] = {0, 0, codec::kMessageContinuesFlag,
                                  codec::kWindowFullFlag};
        session
            .SendFrame(FrameType::kMessage, stream,
                       random_() % 3 == 0 ? std::string(1, '\0') + Bytes(200)
                                          : response.SerializeAsString(),
                       deadline, flags[random_() % 4])
            .IgnoreError();
        break;
      }
      case 4:
      case 5: {
        codec::CallStatus status;
        status.code = static_cast<int32_t>(random_() % 20);  // 17-19: bad
        status.message = "hostile";
        session
            .SendFrame(FrameType::kStatus, stream,
                       random_() % 4 == 0 ? Bytes(64)
                                          : codec::EncodeCallStatus(status),
                       deadline)
            .IgnoreError();
        break;
      }
      case 6:
        session
            .SendControl(FrameType::kWindowUpdate, stream,
                         (uint64_t{random_()} << 32) | random_(), deadline)
            .IgnoreError();
        break;
      case 7:
        session
            .SendFrame(static_cast<FrameType>(9 + random_() % 100), stream,
                       Bytes(32), deadline)
            .IgnoreError();
        break;
      default:
        session
            .SendFrame(FrameType::kHalfClose, stream, "",
                       deadline)  // client-only
            .IgnoreError();
        break;
    }
  }

  const Answer answer_;
  std::mt19937 random_;  // the responder thread's only
  std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<Session> session_;  // set once, under mu_
  std::deque<Call> calls_;            // guarded by mu_
  std::atomic<uint64_t> last_advertised_window_{0};
  bool stopping_ = false;  // guarded by mu_
  bool failed_ = false;    // guarded by mu_
  std::atomic<uint64_t> calls_answered_{0};
  std::atomic<int> listen_fd_{-1};
  std::thread responder_;
  std::thread accept_thread_;  // last: starts after the fields it uses
};

// A channel to the server at `path` (plain target; `server` serves its shm
// socket) once its shm session is up on both sides; nullptr, the failure
// recorded, if not within 5 s.
std::shared_ptr<grpc::Channel> ChannelWithSession(HostileServer& server,
                                                  const std::string& path) {
  auto channel = CreateChannel("unix:" + path);
  if (!server.WaitForSession() ||
      !WaitFor([&] { return GetChannelStats(channel.get())->session_alive; },
               absl::Seconds(5))) {
    ADD_FAILURE() << "no shm session";
    return nullptr;
  }
  return channel;
}

// Every block of each side is back home within 5 s: the client's, which
// the server releases at once, and the server's, whatever they carried.
void ExpectEveryBlockHome(HostileServer& server, grpc::Channel* channel) {
  uint64_t held_by_client = 0, held_by_server = 0;
  EXPECT_TRUE(WaitFor(
      [&] {
        held_by_client = server.BlocksHeldByClient();
        held_by_server = GetChannelStats(channel)->session.arena.blocks_in_use;
        return held_by_client == 0 && held_by_server == 0;
      },
      absl::Seconds(5)))
      << "server blocks the client holds: " << held_by_client
      << ", client blocks in use: " << held_by_server;
}

TEST(HostileServerTest, RandomAnswersEndEveryCallAndEveryBlockComesHome) {
  constexpr uint32_t kSeed = 1127;
  const std::string path = testing::FreshSocketPath();
  HostileServer server(path + ".shm", kSeed);
  auto channel = ChannelWithSession(server, path);
  ASSERT_NE(channel, nullptr);
  auto stub = EchoService::NewStub(channel);

  constexpr int kThreads = 4;
  constexpr int kCallsPerThread = 60;
  constexpr absl::Duration kDeadline = absl::Milliseconds(300);
  std::atomic<int> calls_ended{0}, calls_late{0};
  std::atomic<int> by_code[17] = {};  // how the calls ended
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 random(kSeed + t);
      for (int i = 0; i < kCallsPerThread; ++i) {
        grpc::ClientContext context;
        context.set_deadline(In(kDeadline));
        EchoRequest request;
        FillRequest(&request, random() % 2000, i);
        EchoResponse response;
        const absl::Time start = absl::Now();
        grpc::Status status;
        switch (random() % 5) {
          case 0:
            status = stub->Unary(&context, request, &response);
            break;
          case 3: {  // callback API
            CallDone done;
            stub->async()->Unary(&context, &request, &response,
                                 [&](grpc::Status s) { done.Set(s); });
            if (!done.Await(kDeadline + absl::Seconds(2))) {
              ++calls_late;
              done.Await(absl::InfiniteDuration());  // it owns `context`
            }
            status = done.status();
            break;
          }
          case 4: {  // completion-queue API
            grpc::CompletionQueue cq;
            auto call = stub->AsyncUnary(&context, request, &cq);
            call->Finish(&response, &status, &cq);
            void* tag;
            bool ok;
            if (cq.AsyncNext(&tag, &ok, In(kDeadline + absl::Seconds(2))) !=
                grpc::CompletionQueue::GOT_EVENT) {
              ++calls_late;
              static_cast<void>(cq.Next(&tag, &ok));
            }
            break;
          }
          case 1: {
            auto reader = stub->ServerStream(&context, request);
            while (reader->Read(&response)) {
            }
            status = reader->Finish();
            break;
          }
          default: {
            auto stream = stub->Bidi(&context);
            static_cast<void>(stream->Write(request));
            static_cast<void>(stream->WritesDone());
            while (stream->Read(&response)) {
            }
            status = stream->Finish();
            break;
          }
        }
        ++by_code[std::min<int>(status.error_code(), 16)];
        // A call ends by its deadline at the latest (plus scheduling).
        if (absl::Now() - start > kDeadline + absl::Seconds(2)) ++calls_late;
        ++calls_ended;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(calls_ended.load(), kThreads * kCallsPerThread);
  EXPECT_EQ(calls_late.load(), 0) << "calls outlived their deadline";
  const ClientStats stats = *GetChannelStats(channel.get());
  EXPECT_EQ(stats.calls_on_shm, uint64_t{kThreads * kCallsPerThread})
      << "calls went plain";
  EXPECT_GT(server.calls_answered(), 0u);
  ExpectEveryBlockHome(server, channel.get());
  std::printf("hostile server: %llu calls answered; ended by code:",
              static_cast<unsigned long long>(server.calls_answered()));
  for (int code = 0; code <= 16; ++code) {
    if (by_code[code] > 0) std::printf(" %d:%d", code, by_code[code].load());
  }
  std::printf("\n");
  server.Stop();
  unlink((path + ".shm").c_str());
  EXPECT_TRUE(
      WaitFor([&] { return !GetChannelStats(channel.get())->session_alive; },
              absl::Seconds(5)));
}

// A stream's headers advertise the client's receive window, and the client
// holds the server to it: a server stream whose server sends 200 replies
// while the application reads none ends INTERNAL at once, not at its
// deadline, with none of the flood queued; a unary call given a second
// reply ends INTERNAL too. Before, the client queued whatever came until
// the deadline (on its heap once its arena was full).
TEST(HostileServerTest, RepliesBeyondTheClientsWindowEndTheCall) {
  const std::string path = testing::FreshSocketPath();
  HostileServer server(path + ".shm", 1, HostileServer::Answer::kFlood);
  auto channel = ChannelWithSession(server, path);
  ASSERT_NE(channel, nullptr);
  auto stub = EchoService::NewStub(channel);
  EchoRequest request;
  FillRequest(&request, 16, 1);
  EchoResponse response;
  {
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(10)));
    const absl::Time start = absl::Now();
    auto reader = stub->ServerStream(&context, request);
    absl::SleepFor(absl::Milliseconds(300));  // the flood arrives unread
    int read = 0;
    while (reader->Read(&response)) ++read;
    const grpc::Status status = reader->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL)
        << status.error_message();
    EXPECT_NE(status.error_message().find("flow-control window"),
              std::string::npos)
        << status.error_message();
    EXPECT_LE(read, 64) << "more than the window was queued";
    EXPECT_LT(absl::Now() - start, absl::Seconds(5)) << "ended by deadline";
    EXPECT_EQ(transport::DecodeCredit(server.last_advertised_window()).messages,
              64u)
        << "the client's default window, advertised";
  }
  {
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(10)));
    const absl::Time start = absl::Now();
    const grpc::Status status = stub->Unary(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL)
        << status.error_message();
    EXPECT_LT(absl::Now() - start, absl::Seconds(5)) << "ended by deadline";
  }
  EXPECT_EQ(GetChannelStats(channel.get())->calls_on_shm, 2u);
  ExpectEveryBlockHome(server, channel.get());
  server.Stop();
  unlink((path + ".shm").c_str());
}

}  // namespace
}  // namespace shmgrpc::test
