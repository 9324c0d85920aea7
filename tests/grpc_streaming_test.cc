// Streaming calls over shm between two real processes: server, client and
// bidi streaming with the sync API, and a callback bidi reactor (corked
// initial metadata too), against sync and callback servers.
#include <atomic>
#include <string>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "shmgrpc.h"
#include "tests/call_done.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_bidi_reactor.h"
#include "tests/echo_fixture.h"
#include "tests/echo_logic.h"
#include "tests/server_process.h"

namespace shmgrpc::test {
namespace {

class StreamingTest : public EchoStyleTest {};

TEST_P(StreamingTest, ServerStreamingInOrder) {
  EchoRequest request;
  FillRequest(&request, 4096, 100);
  request.set_reply_count(200);
  grpc::ClientContext context;
  auto reader = stub_->ServerStream(&context, request);
  EchoResponse response;
  int received = 0;
  while (reader->Read(&response)) {
    ASSERT_EQ(response.seq(), 100 + received);
    ASSERT_TRUE(PayloadIntact(response));
    ++received;
  }
  grpc::Status status = reader->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(received, 200);
  EXPECT_EQ(CallsOnShm(), 1u);
}

TEST_P(StreamingTest, ClientStreamingCountsAndChecksums) {
  grpc::ClientContext context;
  EchoResponse response;
  auto writer = stub_->ClientStream(&context, &response);
  uint64_t combined = 0;
  for (int i = 0; i < 300; ++i) {
    EchoRequest request;
    FillRequest(&request, (i * 997) % 70000, i);
    combined = combined * 31 + request.checksum();
    ASSERT_TRUE(writer->Write(request)) << i;
  }
  ASSERT_TRUE(writer->WritesDone());
  grpc::Status status = writer->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.messages_seen(), 300);
  EXPECT_EQ(response.checksum(), combined);
  EXPECT_EQ(CallsOnShm(), 1u);
}

TEST_P(StreamingTest, ClientStreamingMessagesLargerThanTheWindow) {
  // Each message alone fills the default 1 MiB flow-control window.
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(20));
  EchoResponse response;
  auto writer = stub_->ClientStream(&context, &response);
  for (int i = 0; i < 6; ++i) {
    EchoRequest request;
    FillRequest(&request, (1 << 20) + i, i);
    ASSERT_TRUE(writer->Write(request)) << i;
  }
  ASSERT_TRUE(writer->WritesDone());
  grpc::Status status = writer->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.messages_seen(), 6);
  EXPECT_EQ(CallsOnShm(), 1u);
}

TEST_P(StreamingTest, BidiThousandMessagesInOrder) {
  grpc::ClientContext context;
  auto stream = stub_->Bidi(&context);
  for (int i = 0; i < 1000; ++i) {
    EchoRequest request;
    FillRequest(&request, i % 5 == 0 ? 65536 : 64, i);
    ASSERT_TRUE(stream->Write(request)) << i;
    EchoResponse response;
    ASSERT_TRUE(stream->Read(&response)) << i;
    ASSERT_EQ(response.seq(), i);
    ASSERT_EQ(response.messages_seen(), i + 1);
    ASSERT_TRUE(PayloadIntact(response));
  }
  ASSERT_TRUE(stream->WritesDone());
  EchoResponse extra;
  EXPECT_FALSE(stream->Read(&extra));
  grpc::Status status = stream->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(CallsOnShm(), 1u);
}

// A stream the client ends, by its deadline or by TryCancel after one round
// trip, ends at once over shm: DEADLINE_EXCEEDED within 50 ms of the
// deadline, CANCELLED within 50 ms of TryCancel; and the server lets go of
// the call, every server style.
TEST_P(StreamingTest, ClientEndingAStreamEndsItAtOnce) {
  for (const bool by_deadline : {true, false}) {
    const char* how = by_deadline ? "deadline" : "TryCancel";
    grpc::ClientContext context;
    const absl::Time deadline =
        absl::Now() +
        (by_deadline ? absl::Milliseconds(300) : absl::Seconds(10));
    context.set_deadline(absl::ToChronoTime(deadline));
    auto stream = stub_->Bidi(&context);
    EchoRequest request;
    FillRequest(&request, 100, 1);
    ASSERT_TRUE(stream->Write(request)) << how;
    EchoResponse response;
    ASSERT_TRUE(stream->Read(&response)) << how;
    const absl::Time ending = by_deadline ? deadline : absl::Now();
    if (!by_deadline) context.TryCancel();
    EXPECT_FALSE(stream->Read(&response)) << how;  // no more replies
    const grpc::Status status = stream->Finish();
    const absl::Time ended = absl::Now();
    EXPECT_EQ(status.error_code(), by_deadline
                                       ? grpc::StatusCode::DEADLINE_EXCEEDED
                                       : grpc::StatusCode::CANCELLED)
        << how << ": " << status.error_message();
    EXPECT_GE(ended, ending) << how;
    EXPECT_LT(ended - ending, absl::Milliseconds(50)) << how;
  }
  EXPECT_EQ(CallsOnShm(), 2u);
  EXPECT_TRUE(WaitFor(
      [&] {
        const ServerStatsReply stats = FetchServerStats(server_->target());
        return stats.calls_injected() == 2 && stats.calls_active() == 0 &&
               stats.blocks_in_use() == 0;
      },
      absl::Seconds(5)))
      << "the server still holds a call";
}

// Write options on a client stream: buffer-hinted and corked writes arrive
// (in order, none held back once a plain write or the end follows), and
// WriteLast both sends its message and half-closes, every server style.
TEST_P(StreamingTest, WriteOptionsBufferHintCorkAndWriteLast) {
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(10)));
  auto stream = stub_->Bidi(&context);
  EchoRequest request;
  EchoResponse response;
  FillRequest(&request, 100, 0);
  ASSERT_TRUE(stream->Write(request, grpc::WriteOptions().set_buffer_hint()));
  FillRequest(&request, 100, 1);
  ASSERT_TRUE(stream->Write(request, grpc::WriteOptions().set_corked()));
  FillRequest(&request, 100, 2);
  ASSERT_TRUE(stream->Write(request));
  for (int64_t seq = 0; seq <= 2; ++seq) {
    ASSERT_TRUE(stream->Read(&response)) << seq;
    EXPECT_EQ(response.seq(), seq);
    EXPECT_TRUE(PayloadIntact(response));
  }
  FillRequest(&request, 100, 3);
  stream->WriteLast(request, grpc::WriteOptions());
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_EQ(response.seq(), 3);
  EXPECT_EQ(response.messages_seen(), 4);
  EXPECT_FALSE(stream->Read(&response)) << "the server saw no half-close";
  const grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(CallsOnShm(), 1u);
}

// The completion-queue (async) client API on streams: bidi, server- and
// client-streaming, each message checked, all over shm.
TEST_P(StreamingTest, CompletionQueueClientStreams) {
  grpc::CompletionQueue cq;
  auto next = [&cq](void* want) {
    void* tag;
    bool ok = false;
    EXPECT_EQ(cq.AsyncNext(&tag, &ok, In(absl::Seconds(10))),
              grpc::CompletionQueue::GOT_EVENT);
    EXPECT_EQ(tag, want);
    return ok;
  };
  void* const kTag = reinterpret_cast<void*>(1);
  {  // bidi: 200 ping-pongs
    grpc::ClientContext context;
    auto stream = stub_->AsyncBidi(&context, &cq, kTag);
    ASSERT_TRUE(next(kTag));
    for (int i = 0; i < 200; ++i) {
      EchoRequest request;
      FillRequest(&request, i % 10 == 0 ? 65536 : 100, i);
      stream->Write(request, kTag);
      ASSERT_TRUE(next(kTag)) << i;
      EchoResponse response;
      stream->Read(&response, kTag);
      ASSERT_TRUE(next(kTag)) << i;
      ASSERT_EQ(response.seq(), i);
      ASSERT_TRUE(PayloadIntact(response));
    }
    stream->WritesDone(kTag);
    ASSERT_TRUE(next(kTag));
    EchoResponse extra;
    stream->Read(&extra, kTag);
    EXPECT_FALSE(next(kTag));  // end of stream
    grpc::Status status;
    stream->Finish(&status, kTag);
    ASSERT_TRUE(next(kTag));
    EXPECT_TRUE(status.ok()) << status.error_message();
  }
  {  // server streaming: 50 replies
    grpc::ClientContext context;
    EchoRequest request;
    FillRequest(&request, 1000, 0);
    request.set_reply_count(50);
    auto reader = stub_->AsyncServerStream(&context, request, &cq, kTag);
    ASSERT_TRUE(next(kTag));
    int received = 0;
    for (;;) {
      EchoResponse response;
      reader->Read(&response, kTag);
      if (!next(kTag)) break;
      EXPECT_TRUE(PayloadIntact(response));
      ++received;
    }
    grpc::Status status;
    reader->Finish(&status, kTag);
    ASSERT_TRUE(next(kTag));
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(received, 50);
  }
  {  // client streaming: 100 messages
    grpc::ClientContext context;
    EchoResponse response;
    auto writer = stub_->AsyncClientStream(&context, &response, &cq, kTag);
    ASSERT_TRUE(next(kTag));
    for (int i = 0; i < 100; ++i) {
      EchoRequest request;
      FillRequest(&request, 4096, i);
      writer->Write(request, kTag);
      ASSERT_TRUE(next(kTag)) << i;
    }
    writer->WritesDone(kTag);
    ASSERT_TRUE(next(kTag));
    grpc::Status status;
    writer->Finish(&status, kTag);
    ASSERT_TRUE(next(kTag));
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.messages_seen(), 100);
  }
  EXPECT_EQ(CallsOnShm(), 3u);
}

// A handler that ends a client stream early (here: DATA_LOSS at a bad
// checksum) leaves the writer a window ahead, with writes parked for credit
// that never comes. They must fail when the status arrives: they hung, past
// the call's deadline, until they did (a plain channel's Write fails too).
TEST_P(StreamingTest, ServerEndingAStreamEarlyFailsParkedWrites) {
  {  // sync writer
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(20)));
    EchoResponse response;
    auto writer = stub_->ClientStream(&context, &response);
    const absl::Time start = absl::Now();
    int written = 0;
    for (int i = 0; i < 300; ++i) {
      EchoRequest request;
      FillRequest(&request, 1000, i);
      if (i == 5) request.set_checksum(request.checksum() + 1);
      if (!writer->Write(request)) break;
      ++written;
    }
    const grpc::Status status = writer->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::DATA_LOSS)
        << status.error_message();
    EXPECT_LT(written, 300) << "the writes never failed";
    EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  }
  {  // callback reactor
    EchoBidiReactor reactor(stub_.get(), 300, /*corked=*/false,
                            [](int i, EchoRequest* request) {
                              FillRequest(request, 1000, i);
                              if (i == 5) {
                                request->set_checksum(request->checksum() + 1);
                              }
                            });
    ASSERT_TRUE(reactor.Await(absl::Seconds(10)))
        << "the stream hung: sent " << reactor.sent();
    EXPECT_EQ(reactor.status().error_code(), grpc::StatusCode::DATA_LOSS)
        << reactor.status().error_message();
    EXPECT_LT(reactor.sent(), 300);
  }
  EXPECT_EQ(CallsOnShm(), 2u);
}

// The other callback reactors: unary (with initial metadata), server
// streaming (read) and client streaming (write).
class UnaryReactor : public grpc::ClientUnaryReactor {
 public:
  void OnReadInitialMetadataDone(bool ok) override { metadata_ok = ok; }
  void OnDone(const grpc::Status& status) override { done.Set(status); }
  std::atomic<bool> metadata_ok{false};
  CallDone done;
};

class ReadReactor : public grpc::ClientReadReactor<EchoResponse> {
 public:
  ReadReactor(EchoService::Stub* stub, const EchoRequest& request) {
    stub->async()->ServerStream(&context_, &request, this);
    StartRead(&response_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    if (!PayloadIntact(response_)) ++errors;
    ++received;
    StartRead(&response_);
  }
  void OnDone(const grpc::Status& status) override { done.Set(status); }
  int received = 0, errors = 0;  // read after done.Await()
  CallDone done;

 private:
  grpc::ClientContext context_;
  EchoResponse response_;
};

class WriteReactor : public grpc::ClientWriteReactor<EchoRequest> {
 public:
  WriteReactor(EchoService::Stub* stub, int messages) : messages_(messages) {
    stub->async()->ClientStream(&context_, &response, this);
    NextWrite();
    StartCall();
  }
  void OnWriteDone(bool ok) override {
    if (ok) NextWrite();
  }
  void OnDone(const grpc::Status& status) override { done.Set(status); }
  EchoResponse response;  // read after done.Await()
  CallDone done;

 private:
  void NextWrite() {
    if (sent_ == messages_) {
      StartWritesDone();
      return;
    }
    FillRequest(&request_, 2000, sent_++);
    StartWrite(&request_);
  }
  grpc::ClientContext context_;
  EchoRequest request_;
  const int messages_;
  int sent_ = 0;
};

TEST_P(StreamingTest, CallbackUnaryReadAndWriteReactors) {
  {
    grpc::ClientContext context;
    EchoRequest request;
    FillRequest(&request, 100, 5);
    request.set_add_metadata(true);
    EchoResponse response;
    UnaryReactor reactor;
    stub_->async()->Unary(&context, &request, &response, &reactor);
    reactor.StartCall();
    ASSERT_TRUE(reactor.done.Await(absl::Seconds(10))) << "unary hung";
    EXPECT_TRUE(reactor.done.status().ok())
        << reactor.done.status().error_message();
    EXPECT_TRUE(reactor.metadata_ok.load());
    EXPECT_EQ(response.seq(), 5);
    EXPECT_TRUE(PayloadIntact(response));
    EXPECT_EQ(context.GetServerInitialMetadata().count("x-echo-initial"), 1u);
  }
  {
    EchoRequest request;
    FillRequest(&request, 1000, 0);
    request.set_reply_count(100);
    ReadReactor reactor(stub_.get(), request);
    ASSERT_TRUE(reactor.done.Await(absl::Seconds(10))) << "read hung";
    EXPECT_TRUE(reactor.done.status().ok());
    EXPECT_EQ(reactor.received, 100);
    EXPECT_EQ(reactor.errors, 0);
  }
  {
    WriteReactor reactor(stub_.get(), 200);
    ASSERT_TRUE(reactor.done.Await(absl::Seconds(10))) << "write hung";
    EXPECT_TRUE(reactor.done.status().ok());
    EXPECT_EQ(reactor.response.messages_seen(), 200);
  }
  EXPECT_EQ(CallsOnShm(), 3u);
}

TEST_P(StreamingTest, CallbackBidiReactor) {
  for (bool corked : {false, true}) {
    EchoBidiReactor reactor(stub_.get(), 500, corked,
                            [](int i, EchoRequest* request) {
                              FillRequest(request, 100 + i % 3000, i);
                            });
    ASSERT_TRUE(reactor.Await(absl::Seconds(20)))
        << "reactor hung, corked=" << corked;
    ASSERT_TRUE(reactor.status().ok()) << reactor.status().error_message();
    EXPECT_EQ(reactor.received(), 500);
    EXPECT_EQ(reactor.errors(), 0);
  }
  EXPECT_EQ(CallsOnShm(), 2u);
}

// Each side sizes its own stream windows (Options::stream_window_*), and
// the two need not agree. A receiver whose window is more than twice its
// sender's credits only after half of its own, which such a sender never
// sends: both would wait for the deadline. Here the server's window is 256
// messages against the client's default 64 (client streaming), and a
// client's 1024 against the server's 256 (server streaming), with 100-byte
// messages so that no byte limit is reached first.
TEST(StreamWindowTest, SidesWithDifferentWindowsDoNotStall) {
  testing::ServerProcess server("sync", {"--stream_window_messages=256"});
  ASSERT_TRUE(server.status().ok()) << server.status();
  {
    auto stub = EchoService::NewStub(CreateChannel(server.target()));
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(5)));
    EchoResponse response;
    auto writer = stub->ClientStream(&context, &response);
    for (int i = 0; i < 200; ++i) {
      EchoRequest request;
      FillRequest(&request, 100, i);
      ASSERT_TRUE(writer->Write(request)) << "write " << i;
    }
    ASSERT_TRUE(writer->WritesDone());
    const grpc::Status status = writer->Finish();
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.messages_seen(), 200);
  }
  {
    Options options;
    options.stream_window_messages = 1024;
    auto channel = CreateChannel(server.target(), options);
    auto stub = EchoService::NewStub(channel);
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(5)));
    EchoRequest request;
    FillRequest(&request, 100, 0);
    request.set_reply_count(600);
    auto reader = stub->ServerStream(&context, request);
    EchoResponse response;
    int received = 0;
    while (reader->Read(&response)) ++received;
    const grpc::Status status = reader->Finish();
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(received, 600);
    EXPECT_EQ(GetChannelStats(channel.get())->calls_on_shm, 1u);
  }
}

// "async": Bidi through the completion-queue API (the other streaming
// methods of that server are sync).
INSTANTIATE_TEST_SUITE_P(ServerStyles, StreamingTest,
                         ::testing::Values("sync", "callback", "async"));

}  // namespace
}  // namespace shmgrpc::test
