// grpc::GenericStub calls (ByteBuffer messages, as a proxy or sidecar
// forwards them) over a channel with Options::carry_generic_stub_calls:
// unary by the callback and the completion-queue APIs, and a bidi stream,
// at sizes from empty to a chain of blocks, go over shm and arrive intact;
// without the option they go plain (grpc_behavior_test's
// GenericStubCallGoesOverThePlainPath).
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "shmgrpc.h"
#include "tests/call_done.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_fixture.h"
#include "tests/echo_logic.h"

namespace shmgrpc::test {
namespace {

constexpr char kUnaryMethod[] = "/shmgrpc.test.EchoService/Unary";
constexpr char kBidiMethod[] = "/shmgrpc.test.EchoService/Bidi";

grpc::ByteBuffer Serialized(const EchoRequest& request) {
  grpc::ByteBuffer bytes;
  bool own;
  EXPECT_TRUE(
      grpc::SerializationTraits<EchoRequest>::Serialize(request, &bytes, &own)
          .ok());
  return bytes;
}

EchoResponse Parsed(grpc::ByteBuffer* bytes) {
  EchoResponse response;
  EXPECT_TRUE(
      grpc::SerializationTraits<EchoResponse>::Deserialize(bytes, &response)
          .ok());
  return response;
}

// The next event of `cq` (within 15 s): whether it succeeded.
bool NextEventOk(grpc::CompletionQueue* cq) {
  void* tag;
  bool ok = false;
  EXPECT_EQ(cq->AsyncNext(&tag, &ok, In(absl::Seconds(15))),
            grpc::CompletionQueue::GOT_EVENT);
  return ok;
}

void ShutDownAndDrain(grpc::CompletionQueue* cq) {
  cq->Shutdown();
  void* tag;
  bool ok;
  while (cq->Next(&tag, &ok)) {
  }
}

class GenericStubTest : public EchoTest {
 protected:
  void SetUp() override {
    EchoTest::SetUp();
    Options options;
    options.carry_generic_stub_calls = true;
    generic_channel_ = CreateChannel(server_->target(), options);
  }
  void TearDown() override {
    generic_channel_.reset();
    EchoTest::TearDown();
  }

  std::shared_ptr<grpc::Channel> generic_channel_;
};

TEST_F(GenericStubTest, CallbackUnaryCallsGoOverShm) {
  grpc::GenericStub generic(generic_channel_);
  for (size_t size : {0, 100, 100000, 3000000}) {
    EchoRequest request;
    FillRequest(&request, size, 7);
    grpc::ByteBuffer request_bytes = Serialized(request);
    grpc::ByteBuffer reply_bytes;
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(10)));
    CallDone done;
    generic.UnaryCall(&context, kUnaryMethod, grpc::StubOptions(),
                      &request_bytes, &reply_bytes,
                      [&](grpc::Status status) { done.Set(status); });
    ASSERT_TRUE(done.Await(absl::Seconds(15))) << size;
    ASSERT_TRUE(done.status().ok())
        << size << ": " << done.status().error_message();
    const EchoResponse response = Parsed(&reply_bytes);
    EXPECT_EQ(response.payload().size(), size);
    EXPECT_TRUE(PayloadIntact(response)) << size;
    EXPECT_EQ(response.seq(), 7);
    EXPECT_NE(response.peer_pid(), "") << size << ": went plain";
  }
  const ClientStats stats = *GetChannelStats(generic_channel_.get());
  EXPECT_EQ(stats.calls_on_shm, 4u);
  EXPECT_EQ(stats.calls_plain(), 0u);
}

TEST_F(GenericStubTest, CompletionQueueUnaryCallsGoOverShm) {
  grpc::GenericStub generic(generic_channel_);
  grpc::CompletionQueue cq;
  for (size_t size : {64, 200000}) {
    EchoRequest request;
    FillRequest(&request, size, 3);
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(10)));
    std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader =
        generic.PrepareUnaryCall(&context, kUnaryMethod, Serialized(request),
                                 &cq);
    reader->StartCall();
    grpc::ByteBuffer reply_bytes;
    grpc::Status status;
    reader->Finish(&reply_bytes, &status, reinterpret_cast<void*>(1));
    ASSERT_TRUE(NextEventOk(&cq));
    ASSERT_TRUE(status.ok()) << size << ": " << status.error_message();
    const EchoResponse response = Parsed(&reply_bytes);
    EXPECT_TRUE(PayloadIntact(response)) << size;
    EXPECT_NE(response.peer_pid(), "") << size << ": went plain";
  }
  ShutDownAndDrain(&cq);
  EXPECT_EQ(GetChannelStats(generic_channel_.get())->calls_on_shm, 2u);
}

// A bidi stream through the generic completion-queue API: 50 messages each
// way in order, then the status.
TEST_F(GenericStubTest, BidiStreamGoesOverShmInOrder) {
  grpc::GenericStub generic(generic_channel_);
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(20)));
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> stream =
      generic.PrepareCall(&context, kBidiMethod, &cq);
  stream->StartCall(nullptr);
  ASSERT_TRUE(NextEventOk(&cq));
  for (int64_t seq = 1; seq <= 50; ++seq) {
    EchoRequest request;
    FillRequest(&request, seq % 2 ? 300 : 70000, seq);
    stream->Write(Serialized(request), nullptr);
    ASSERT_TRUE(NextEventOk(&cq)) << seq;
    grpc::ByteBuffer reply_bytes;
    stream->Read(&reply_bytes, nullptr);
    ASSERT_TRUE(NextEventOk(&cq)) << seq;
    const EchoResponse response = Parsed(&reply_bytes);
    EXPECT_EQ(response.seq(), seq);
    EXPECT_TRUE(PayloadIntact(response)) << seq;
    if (seq == 1) {
      EXPECT_NE(response.peer_pid(), "") << "went plain";
    }
  }
  stream->WritesDone(nullptr);
  ASSERT_TRUE(NextEventOk(&cq));
  grpc::Status status;
  stream->Finish(&status, nullptr);
  ASSERT_TRUE(NextEventOk(&cq));
  EXPECT_TRUE(status.ok()) << status.error_message();
  ShutDownAndDrain(&cq);
  EXPECT_EQ(GetChannelStats(generic_channel_.get())->calls_on_shm, 1u);
}

// Generated stubs on the same channel are served as before.
TEST_F(GenericStubTest, GeneratedStubCallsStillGoOverShm) {
  auto stub = EchoService::NewStub(generic_channel_);
  EchoResponse response;
  ASSERT_TRUE(UnaryEcho(stub.get(), 100, 1, &response).ok());
  EXPECT_NE(response.peer_pid(), "");
  EXPECT_EQ(GetChannelStats(generic_channel_.get())->calls_on_shm, 1u);
}

}  // namespace
}  // namespace shmgrpc::test
