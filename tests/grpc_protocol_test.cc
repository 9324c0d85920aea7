// A hand-written client speaking frames to a live echo_server, for what the
// real client never sends: call headers that do not decode, a unary call
// cancelled before its request, a unary call half-closed without a request,
// frames for streams that do not exist. Each gets the right status on its
// own stream (sent by the server's CQ thread: its session thread never waits
// for ring space), and a well-formed call on the same session still works.
// Also a peer that ignores the server's goaway at shutdown, and a storm of
// random frames.
#include <signal.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "codec/call_frames.h"
#include "codec/frame_type.h"
#include "gtest/gtest.h"
#include "tests/echo.pb.h"
#include "tests/echo_fixture.h"
#include "tests/echo_logic.h"
#include "tests/server_process.h"
#include "transport/flow_window.h"
#include "transport/handshake.h"
#include "transport/options.h"
#include "transport/session.h"

namespace shmgrpc::test {
namespace {

using codec::FrameType;
using testing::ServerProcess;
using transport::Session;

constexpr char kUnaryMethod[] = "/shmgrpc.test.EchoService/Unary";

// A raw session to the server that records, per stream, the status it gets
// and the messages before it.
class RawClient {
 public:
  explicit RawClient(const std::string& socket_path,
                     const Options& options = Options()) {
    absl::StatusOr<transport::Handshaken> handshaken =
        transport::ClientHandshake(socket_path + ".shm", options);
    if (!handshaken.ok()) {
      status_ = handshaken.status();
      return;
    }
    session_ = Session::Create(
        std::move(*handshaken),
        [this](const shm::ReceivedMessage& frame) { OnFrame(frame); },
        [this](const absl::Status&) {
          std::lock_guard<std::mutex> lock(mu_);
          closed_at_ = absl::Now();
          cv_.notify_all();
        });
    status_ = session_->Start();
  }
  ~RawClient() {
    if (session_) session_->Shutdown();
  }

  const absl::Status& status() const { return status_; }
  Session& session() { return *session_; }

  absl::Status Send(FrameType type, uint64_t stream, absl::string_view bytes,
                    uint16_t flags = 0) {
    return session_->SendFrame(type, stream, bytes,
                               absl::Now() + absl::Seconds(5), flags);
  }
  absl::Status SendHeaders(uint64_t stream, const std::string& method,
                           codec::Metadata metadata = {},
                           std::string authority = "") {
    codec::CallHeaders headers;
    headers.method = method;
    headers.metadata = std::move(metadata);
    headers.authority = std::move(authority);
    return SendHeaders(stream, headers);
  }
  absl::Status SendHeaders(uint64_t stream, const codec::CallHeaders& headers) {
    return Send(FrameType::kCallHeaders, stream,
                codec::EncodeCallHeaders(headers), codec::kUnaryCallFlag);
  }
  // A whole unary call: `headers`, one request, half-close.
  absl::Status SendUnaryCall(uint64_t stream, const codec::CallHeaders& headers,
                             const EchoRequest& request) {
    absl::Status sent = SendHeaders(stream, headers);
    if (sent.ok()) {
      sent = Send(FrameType::kMessage, stream, request.SerializeAsString());
    }
    if (sent.ok()) sent = Send(FrameType::kHalfClose, stream, "");
    return sent;
  }

  // The status of `stream`, waiting up to 5 s; nullopt if none came.
  std::optional<codec::CallStatus> StatusOf(uint64_t stream) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(5),
                 [&] { return statuses_.count(stream) > 0; });
    auto it = statuses_.find(stream);
    if (it == statuses_.end()) return std::nullopt;
    return it->second;
  }
  // When the server's kGoAway came (this client ignores it otherwise), or
  // when the session closed, waiting up to `timeout`; nullopt if not.
  std::optional<absl::Time> GoAwayAt(absl::Duration timeout) {
    return WaitFor(&goaway_at_, timeout);
  }
  std::optional<absl::Time> ClosedAt(absl::Duration timeout) {
    return WaitFor(&closed_at_, timeout);
  }
  int MessagesOn(uint64_t stream) {
    std::lock_guard<std::mutex> lock(mu_);
    return messages_[stream];
  }
  std::string LastMessageOn(uint64_t stream) {
    std::lock_guard<std::mutex> lock(mu_);
    return last_message_[stream];
  }

 private:
  void OnFrame(const shm::ReceivedMessage& frame) {
    const absl::string_view bytes(reinterpret_cast<const char*>(frame.data),
                                  frame.descriptor.length);
    const uint64_t stream = frame.descriptor.tag;
    {
      std::lock_guard<std::mutex> lock(mu_);
      switch (static_cast<FrameType>(frame.descriptor.type)) {
        case FrameType::kStatus: {
          absl::StatusOr<codec::CallStatus> status =
              codec::DecodeCallStatus(bytes);
          if (status.ok()) statuses_[stream] = *status;
          break;
        }
        case FrameType::kMessage:
          ++messages_[stream];
          last_message_[stream] = std::string(bytes);
          break;
        case FrameType::kGoAway:
          if (!goaway_at_) goaway_at_ = absl::Now();
          break;
        default:
          break;
      }
    }
    session_->Release(frame);
    cv_.notify_all();
  }

  std::optional<absl::Time> WaitFor(std::optional<absl::Time>* when,
                                    absl::Duration timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                 [&] { return when->has_value(); });
    return *when;
  }

  absl::Status status_;
  std::shared_ptr<Session> session_;
  std::mutex mu_;
  std::optional<absl::Time> goaway_at_, closed_at_;
  std::condition_variable cv_;
  std::map<uint64_t, codec::CallStatus> statuses_;
  std::map<uint64_t, int> messages_;
  std::map<uint64_t, std::string> last_message_;
};

class ProtocolTest : public ::testing::Test {
 protected:
  virtual std::string ServerStyle() const { return "sync"; }
  virtual Options ClientOptions() const { return Options(); }
  // Where the server's stderr goes; empty: to the test's.
  virtual std::string ServerStderrPath() const { return ""; }
  virtual std::vector<std::string> ServerArgs() const { return {}; }
  void SetUp() override {
    server_ = std::make_unique<ServerProcess>(ServerStyle(), ServerArgs(), "",
                                              ServerStderrPath());
    ASSERT_TRUE(server_->status().ok()) << server_->status();
    client_ =
        std::make_unique<RawClient>(server_->socket_path(), ClientOptions());
    ASSERT_TRUE(client_->status().ok()) << client_->status();
  }
  void TearDown() override {
    // After whatever came before, a well-formed unary call on the same
    // session is answered.
    if (client_ != nullptr && client_->status().ok()) ExpectEchoWorks(999);
    client_.reset();
    if (server_ != nullptr && server_->status().ok()) {
      EXPECT_EQ(server_->Stop(), 0) << "echo_server did not exit cleanly";
    }
  }

  // `stream` ends (within 5 s) with status `code`; `what` names it.
  void ExpectStatus(uint64_t stream, grpc::StatusCode code,
                    const std::string& what) {
    std::optional<codec::CallStatus> status = client_->StatusOf(stream);
    ASSERT_TRUE(status.has_value()) << "no status for " << what;
    EXPECT_EQ(status->code, static_cast<int>(code))
        << what << ": " << status->message;
  }

  // Every block of the client's arena the server was sent comes back
  // within 5 s (a frame it dropped without releasing would stay in use
  // until the session closes).
  void ExpectEveryBlockBack() {
    uint64_t held = 0;
    EXPECT_TRUE(WaitFor(
        [&] {
          held = client_->session().Stats().arena.blocks_in_use;
          return held == 0;
        },
        absl::Seconds(5)))
        << held << " blocks still held by the server";
  }

  void ExpectEchoWorks(uint64_t stream) { ExpectEchoWorksWith(stream, {}); }
  void ExpectEchoWorksWith(uint64_t stream, codec::Metadata metadata) {
    EchoRequest request;
    FillRequest(&request, 100, 7);
    codec::CallHeaders headers;
    headers.method = kUnaryMethod;
    headers.metadata = std::move(metadata);
    ASSERT_TRUE(client_->SendUnaryCall(stream, headers, request).ok());
    std::optional<codec::CallStatus> status = client_->StatusOf(stream);
    ASSERT_TRUE(status.has_value()) << "no status for the echo call";
    EXPECT_EQ(status->code, 0) << status->message;
    EXPECT_EQ(client_->MessagesOn(stream), 1);
    EchoResponse response;
    ASSERT_TRUE(response.ParseFromString(client_->LastMessageOn(stream)));
    EXPECT_EQ(response.seq(), 7);
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<RawClient> client_;
};

TEST_F(ProtocolTest, HeadersThatDoNotDecodeEndThatStreamInternal) {
  ASSERT_TRUE(client_
                  ->Send(FrameType::kCallHeaders, 1, "\x07garbage",
                         codec::kUnaryCallFlag)
                  .ok());
  ExpectStatus(1, grpc::StatusCode::INTERNAL, "bad headers");
}

TEST_F(ProtocolTest, UnaryCallCancelledBeforeItsRequestEndsCancelled) {
  ASSERT_TRUE(client_->SendHeaders(3, kUnaryMethod).ok());
  ASSERT_TRUE(client_->Send(FrameType::kCancel, 3, "").ok());
  ExpectStatus(3, grpc::StatusCode::CANCELLED, "the cancelled call");
}

TEST_F(ProtocolTest, UnaryCallHalfClosedWithoutRequestEndsInternal) {
  ASSERT_TRUE(client_->SendHeaders(5, kUnaryMethod).ok());
  ASSERT_TRUE(client_->Send(FrameType::kHalfClose, 5, "").ok());
  ExpectStatus(5, grpc::StatusCode::INTERNAL, "the empty call");
}

// gRPC aborts the process when metadata it finds illegal is added to a call:
// a client sending such metadata once crashed the server. Each of these
// ends only its own stream, INTERNAL (TearDown: the session still works and
// the server exits cleanly).
TEST_F(ProtocolTest, IllegalMetadataEndsThatStreamInternal) {
  const std::vector<std::pair<std::string, std::string>> entries = {
      {"X-Upper", "v"},          {"x bad", "v"},
      {":path", "/x"},           {"", "v"},
      {"x-nl", "a\nb"},          {"x-nul", std::string("a\0b", 3)},
      {"x-high", "caf\xc3\xa9"},
  };
  uint64_t stream = 21;
  for (const auto& [key, value] : entries) {
    ASSERT_TRUE(
        client_->SendHeaders(stream, kUnaryMethod, {{key, value}}).ok());
    ASSERT_NO_FATAL_FAILURE(
        ExpectStatus(stream, grpc::StatusCode::INTERNAL, "key '" + key + "'"));
    stream += 2;
  }
  // Binary values are fine under a -bin key.
  ExpectEchoWorksWith(stream, {{"x-raw-bin", std::string("\0\xff\n", 3)}});
  // An authority nobody could send over HTTP/2 does not crash it either:
  // the call is answered (gRPC's in-process transport does not check it).
  EchoRequest request;
  FillRequest(&request, 10, 3);
  codec::CallHeaders headers;
  headers.method = kUnaryMethod;
  headers.authority = "bad\nauthority";
  const uint64_t odd = stream + 2;
  ASSERT_TRUE(client_->SendUnaryCall(odd, headers, request).ok());
  ExpectStatus(odd, grpc::StatusCode::OK, "the odd authority");
}

// Methods the server does not have, however odd their names, end that
// stream UNIMPLEMENTED, as over HTTP/2, and harm nothing else.
TEST_F(ProtocolTest, UnknownOrOddMethodsAreUnimplemented) {
  uint64_t stream = 101;
  for (const std::string& method :
       {std::string("/"), std::string("//"), std::string("/x y/z"),
        std::string("/\n"), std::string(5000, '/'),
        std::string("/unknown.Service/Method"),
        std::string("/shmgrpc.test.EchoService/Nope")}) {
    EchoRequest request;
    FillRequest(&request, 10, 3);
    codec::CallHeaders headers;
    headers.method = method;
    ASSERT_TRUE(client_->SendUnaryCall(stream, headers, request).ok());
    ASSERT_NO_FATAL_FAILURE(ExpectStatus(
        stream, grpc::StatusCode::UNIMPLEMENTED, "'" + method + "'"));
    stream += 2;
  }
}

// Deadlines a client could put in the headers: in the past (even before
// 1970) the call ends DEADLINE_EXCEEDED; the farthest future is no limit.
TEST_F(ProtocolTest, PastAndExtremeDeadlines) {
  uint64_t stream = 201;
  const std::pair<int64_t, grpc::StatusCode> cases[] = {
      {1, grpc::StatusCode::DEADLINE_EXCEEDED},
      {-1, grpc::StatusCode::DEADLINE_EXCEEDED},
      {std::numeric_limits<int64_t>::min(),
       grpc::StatusCode::DEADLINE_EXCEEDED},
      {std::numeric_limits<int64_t>::max(), grpc::StatusCode::OK},
  };
  for (const auto& [deadline, expected] : cases) {
    EchoRequest request;
    FillRequest(&request, 10, 3);
    codec::CallHeaders headers;
    headers.method = kUnaryMethod;
    headers.deadline_unix_nanos = deadline;
    ASSERT_TRUE(client_->SendUnaryCall(stream, headers, request).ok());
    ASSERT_NO_FATAL_FAILURE(
        ExpectStatus(stream, expected, "deadline " + std::to_string(deadline)));
    stream += 2;
  }
}

// A request larger than any client within its limits sends (the 64 MiB
// inline limit), chained without end, is refused as it arrives, not
// assembled: its stream ends RESOURCE_EXHAUSTED, unary or streaming, every
// chunk goes back, and the session goes on (TearDown).
TEST_F(ProtocolTest, RequestsOverTheLimitAreRefusedAsTheyArrive) {
  const std::string chunk(64 << 10, 'x');
  const int chunks_over_the_limit = (64 << 20) / chunk.size() + 1;
  codec::CallHeaders bidi;
  bidi.method = "/shmgrpc.test.EchoService/Bidi";
  ASSERT_TRUE(client_->SendHeaders(31, kUnaryMethod).ok());
  ASSERT_TRUE(
      client_->Send(FrameType::kCallHeaders, 33, codec::EncodeCallHeaders(bidi))
          .ok());
  for (uint64_t stream : {31, 33}) {
    for (int i = 0; i < chunks_over_the_limit + 8; ++i) {
      ASSERT_TRUE(client_
                      ->Send(FrameType::kMessage, stream, chunk,
                             codec::kMessageContinuesFlag)
                      .ok())
          << "chunk " << i;
    }
  }
  ExpectStatus(31, grpc::StatusCode::RESOURCE_EXHAUSTED, "the unary call");
  ExpectStatus(33, grpc::StatusCode::RESOURCE_EXHAUSTED, "the stream");
  ExpectEveryBlockBack();
}

// Opens a Bidi stream and sends `requests` requests without waiting for
// credit, then half-closes; the first keeps the handler busy for 300 ms, so
// none is credited back meanwhile.
void SendBidiIgnoringTheWindow(RawClient* client, uint64_t stream,
                               uint64_t requests) {
  codec::CallHeaders bidi;
  bidi.method = "/shmgrpc.test.EchoService/Bidi";
  EchoRequest busy;
  FillRequest(&busy, 16, 0);
  busy.set_delay_ms(300);
  EchoRequest quick;
  FillRequest(&quick, 16, 1);
  ASSERT_TRUE(client
                  ->Send(FrameType::kCallHeaders, stream,
                         codec::EncodeCallHeaders(bidi))
                  .ok());
  ASSERT_TRUE(
      client->Send(FrameType::kMessage, stream, busy.SerializeAsString()).ok());
  for (uint64_t i = 1; i < requests; ++i) {
    ASSERT_TRUE(
        client->Send(FrameType::kMessage, stream, quick.SerializeAsString())
            .ok());
  }
  ASSERT_TRUE(client->Send(FrameType::kHalfClose, stream, "").ok());
}

// The server's welcome gives its stream window (64 messages by default),
// and the server holds a client to it: a stream that sends more requests
// than that while its handler is busy (nothing credited back) is refused
// INTERNAL, and every block comes back; a stream that sends exactly the
// window is served. (Before the window was enforced, the server queued what
// a client sent without bound, on its heap once the arena was full.)
TEST_F(ProtocolTest, AClientIgnoringTheStreamWindowIsRefused) {
  const transport::Credit window =
      transport::DecodeCredit(client_->session().peer_stream_window());
  ASSERT_EQ(window.messages, 64u) << "the server's default window";
  SendBidiIgnoringTheWindow(client_.get(), 41, window.messages);
  SendBidiIgnoringTheWindow(client_.get(), 43, window.messages + 1);
  ExpectStatus(41, grpc::StatusCode::OK, "the stream within its window");
  EXPECT_EQ(client_->MessagesOn(41), static_cast<int>(window.messages));
  ExpectStatus(43, grpc::StatusCode::INTERNAL, "the stream over its window");
  ExpectEveryBlockBack();
}

// The server's welcome gives its limit of concurrent streams per session
// (3 here), and the server holds a client to it: a stream opened past it is
// refused RESOURCE_EXHAUSTED without reaching the service. A stream stops
// counting once the server sends its status or reads its kCancel, so a
// client may open the next one as soon as it has seen the one or sent the
// other (stream_slots.h).
class StreamLimitProtocolTest : public ProtocolTest {
 protected:
  std::vector<std::string> ServerArgs() const override {
    return {"--max_concurrent_streams=3"};
  }
  void OpenBidi(uint64_t stream) {
    codec::CallHeaders bidi;
    bidi.method = "/shmgrpc.test.EchoService/Bidi";
    ASSERT_TRUE(client_
                    ->Send(FrameType::kCallHeaders, stream,
                           codec::EncodeCallHeaders(bidi))
                    .ok());
  }
  // One request on open `stream`, answered by its handler (so the stream
  // did reach the service).
  void ExpectBidiEcho(uint64_t stream) {
    EchoRequest request;
    FillRequest(&request, 16, 5);
    const int before = client_->MessagesOn(stream);
    ASSERT_TRUE(
        client_->Send(FrameType::kMessage, stream, request.SerializeAsString())
            .ok());
    EXPECT_TRUE(WaitFor([&] { return client_->MessagesOn(stream) > before; },
                        absl::Seconds(5)))
        << "stream " << stream << " was not answered";
  }
  void ExpectRefused(uint64_t stream, const std::string& what) {
    ExpectStatus(stream, grpc::StatusCode::RESOURCE_EXHAUSTED, what);
    EXPECT_EQ(client_->MessagesOn(stream), 0) << what;
  }
};

TEST_F(StreamLimitProtocolTest, StreamsPastTheAdvertisedLimitAreRefused) {
  ASSERT_EQ(client_->session().stream_slots().limit(), 3u)
      << "the welcome carries the server's limit";
  for (uint64_t stream : {1, 3, 5}) {
    OpenBidi(stream);
    ExpectBidiEcho(stream);
  }
  OpenBidi(7);
  ExpectRefused(7, "a fourth stream");
  EchoRequest request;
  FillRequest(&request, 16, 9);
  codec::CallHeaders unary;
  unary.method = kUnaryMethod;
  ASSERT_TRUE(client_->SendUnaryCall(9, unary, request).ok());
  ExpectRefused(9, "a unary call as the fourth stream");

  // The server counts a stream closed when it reads its kCancel: the next
  // frame may open a new one.
  ASSERT_TRUE(client_->Send(FrameType::kCancel, 1, "").ok());
  ExpectEchoWorks(11);
  // ... and when it sends its status (the client has seen it).
  ASSERT_TRUE(client_->Send(FrameType::kHalfClose, 3, "").ok());
  ExpectStatus(3, grpc::StatusCode::OK, "a half-closed stream");
  OpenBidi(13);
  OpenBidi(15);
  ExpectBidiEcho(13);
  ExpectBidiEcho(15);
  OpenBidi(17);
  ExpectRefused(17, "a fourth stream again");
  EXPECT_EQ(FetchServerStats(server_->target()).streams_over_limit(), 3u);

  for (uint64_t stream : {5, 13, 15}) {
    ASSERT_TRUE(client_->Send(FrameType::kCancel, stream, "").ok());
  }
  ExpectEveryBlockBack();
  // TearDown's echo call gets a slot again.
}

// What a client does wrong is logged by the server, but at most one line of
// a kind per 10 s: 300 call headers that do not decode and two streams past
// their window make one line each, not 302 (a hostile client could flood
// the server's stderr; bad headers logged every time before).
class ProtocolLogTest : public ProtocolTest {
 protected:
  std::string ServerStderrPath() const override { return stderr_path_; }
  const std::string stderr_path_ = absl::StrCat(
      std::getenv("TEST_TMPDIR") != nullptr ? std::getenv("TEST_TMPDIR")
                                            : "/tmp",
      "/server-stderr-", getpid(), ".txt");
};

TEST_F(ProtocolLogTest, WhatAClientDoesWrongIsLoggedOncePerKind) {
  constexpr int kBadHeaders = 300;
  for (int i = 0; i < kBadHeaders; ++i) {
    ASSERT_TRUE(client_
                    ->Send(FrameType::kCallHeaders, 2 * i + 1, "\x07garbage",
                           codec::kUnaryCallFlag)
                    .ok());
  }
  SendBidiIgnoringTheWindow(client_.get(), 1001, 65);
  SendBidiIgnoringTheWindow(client_.get(), 1003, 65);
  ExpectStatus(2 * kBadHeaders - 1, grpc::StatusCode::INTERNAL, "bad headers");
  ExpectStatus(1001, grpc::StatusCode::INTERNAL, "a stream over its window");
  ExpectStatus(1003, grpc::StatusCode::INTERNAL, "a stream over its window");
  std::ifstream log(stderr_path_);
  ASSERT_TRUE(log.is_open()) << stderr_path_;
  int peer_lines = 0, window_lines = 0;
  for (std::string line; std::getline(log, line);) {
    if (line.find("session with pid") == std::string::npos) continue;
    ++peer_lines;
    if (line.find("flow-control window") != std::string::npos) ++window_lines;
  }
  EXPECT_EQ(peer_lines, 2) << "one line per kind";
  EXPECT_EQ(window_lines, 1);
}

TEST_F(ProtocolTest, FramesForUnknownStreamsAreDropped) {
  // Message, half-close and cancel for streams that never began: no status
  // (there is no call), no effect on the session.
  ASSERT_TRUE(client_->Send(FrameType::kMessage, 11, "abc").ok());
  ASSERT_TRUE(client_->Send(FrameType::kHalfClose, 13, "").ok());
  ASSERT_TRUE(client_->Send(FrameType::kCancel, 15, "").ok());
  ExpectEchoWorks(17);
  EXPECT_FALSE(client_->StatusOf(11).has_value());
}

// 4,000 frames of every kind, valid and not, in random order over 64
// streams: call headers (unary and streaming, valid or garbage), requests
// (whole, cut short, not protobuf, chunked or not; up to 200 KiB from a
// 256 KiB arena, so many go inline), half-closes, cancels,
// credits with any value, frames only a server sends, unknown types. The
// server must survive all of it, still answer a well-formed call on the
// same session, give back every block of the client's arena, and, once the
// client is gone, hold no session, call, block or thread (ASan checks the
// reads in CI). A server that kept the frames it ignores fails it (422
// blocks held). Sync, callback and async services.
class FrameStormTest : public ProtocolTest,
                       public ::testing::WithParamInterface<std::string> {
 protected:
  std::string ServerStyle() const override { return GetParam(); }
  // A small arena, so that the storm's larger requests often find it full
  // and go inline on the socket.
  Options ClientOptions() const override {
    Options options;
    options.arena_bytes = 256 << 10;
    return options;
  }
};

TEST_P(FrameStormTest, RandomFramesHarmNothingElse) {
  constexpr uint32_t kSeed = 20261127;
  std::mt19937 random(kSeed);
  const char* const kMethods[] = {kUnaryMethod,
                                  "/shmgrpc.test.EchoService/ServerStream",
                                  "/shmgrpc.test.EchoService/ClientStream",
                                  "/shmgrpc.test.EchoService/Bidi"};
  auto bytes = [&](size_t max) {
    std::string out(random() % (max + 1), '\0');
    for (char& c : out) c = static_cast<char>(random());
    return out;
  };
  auto request_bytes = [&] {
    EchoRequest request;
    FillRequest(&request,
                random() % 8 == 0 ? random() % (200 << 10) : random() % 5000,
                random() % 100);
    std::string wire = request.SerializeAsString();
    switch (random() % 3) {
      case 0:
        return wire;
      case 1:
        return wire.substr(0, random() % (wire.size() + 1));  // cut short
      default:
        return std::string(1, '\0') + bytes(3000);  // field 0: not protobuf
    }
  };
  std::vector<uint64_t> streams;
  for (uint64_t id = 1001; id < 1129; id += 2) streams.push_back(id);
  for (int i = 0; i < 4000; ++i) {
    const uint64_t stream = streams[random() % streams.size()];
    absl::Status sent;
    switch (random() % 10) {
      case 0:
      case 1: {
        codec::CallHeaders headers;
        headers.method = kMethods[random() % 4];
        const uint16_t flags = random() % 2 ? codec::kUnaryCallFlag : 0;
        sent = random() % 4 == 0
                   ? client_->Send(FrameType::kCallHeaders, stream, bytes(64),
                                   flags)
                   : client_->Send(FrameType::kCallHeaders, stream,
                                   codec::EncodeCallHeaders(headers), flags);
        break;
      }
      case 2:
      case 3:
      case 4:
        sent =
            client_->Send(FrameType::kMessage, stream, request_bytes(),
                          random() % 4 == 0 ? codec::kMessageContinuesFlag : 0);
        break;
      case 5:
        sent = client_->Send(FrameType::kHalfClose, stream, "");
        break;
      case 6:
        sent = client_->Send(FrameType::kCancel, stream, "");
        break;
      case 7:
        sent = client_->session().SendControl(
            FrameType::kWindowUpdate, stream,
            (uint64_t{random()} << 32) | random(),
            absl::Now() + absl::Seconds(5));
        break;
      case 8: {
        const FrameType server_only[] = {FrameType::kInitialMetadata,
                                         FrameType::kStatus,
                                         FrameType::kGoAway};
        sent = client_->Send(server_only[random() % 3], stream, bytes(200));
        break;
      }
      default:
        sent = client_->Send(
            static_cast<FrameType>(random() % 2 ? 0 : 9 + random() % 1000),
            stream, bytes(100));
        break;
    }
    ASSERT_TRUE(sent.ok()) << "frame " << i << " (seed " << kSeed
                           << "): " << sent;
  }
  // Whatever is still open ends (a call waiting for its requests, a
  // half-assembled message).
  for (uint64_t stream : streams) {
    ASSERT_TRUE(client_->Send(FrameType::kCancel, stream, "").ok());
  }
  ExpectEchoWorks(2001);
  ExpectEveryBlockBack();
  const ServerStatsReply during = FetchServerStats(server_->target());
  const uint64_t inline_sent = client_->session().Stats().inline_sent;
  std::printf(
      "storm: %llu calls injected, %d cancellations seen, %llu frames "
      "inline\n",
      static_cast<unsigned long long>(during.calls_injected()),
      during.cancellations_seen(),
      static_cast<unsigned long long>(inline_sent));
  EXPECT_GT(during.calls_injected(), 20u);
  EXPECT_GT(inline_sent, 10u) << "the storm never went inline";
  client_.reset();
  ExpectServerIdle(*server_);
}

INSTANTIATE_TEST_SUITE_P(ServerStyles, FrameStormTest,
                         ::testing::Values("sync", "callback", "async"));

// A peer that ignores the server's kGoAway (one from before it, or a
// stopped one) still gets the calls it sent after it served, and is closed
// by the server once idle for the handshake timeout (1 s); the server then
// exits well before its 2 s deadline.
TEST_F(ProtocolTest, APeerIgnoringTheGoAwayIsServedThenClosedOnceIdle) {
  EchoRequest slow;
  FillRequest(&slow, 100, 5);
  slow.set_delay_ms(300);
  codec::CallHeaders headers;
  headers.method = kUnaryMethod;
  ASSERT_TRUE(client_->SendUnaryCall(5, headers, slow).ok());
  absl::SleepFor(absl::Milliseconds(50));  // in its handler
  const absl::Time stop_at = absl::Now();
  ASSERT_EQ(kill(server_->pid(), SIGTERM), 0);
  const std::optional<absl::Time> goaway_at =
      client_->GoAwayAt(absl::Seconds(1));
  ASSERT_TRUE(goaway_at.has_value()) << "no kGoAway";
  ExpectEchoWorks(7);  // sent after the goaway: served all the same
  ExpectStatus(5, grpc::StatusCode::OK, "the call under way");
  const std::optional<absl::Time> closed_at =
      client_->ClosedAt(absl::Seconds(3));
  ASSERT_TRUE(closed_at.has_value()) << "the server never closed the session";
  EXPECT_GE(*closed_at - *goaway_at, absl::Milliseconds(900))
      << "closed before the idle grace";
  EXPECT_EQ(server_->Stop(), 0) << "echo_server did not exit cleanly";
  EXPECT_LT(absl::Now() - stop_at, absl::Milliseconds(1900))
      << "the server waited for its deadline, not for the idle grace";
  client_.reset();
  server_.reset();
}

}  // namespace
}  // namespace shmgrpc::test
