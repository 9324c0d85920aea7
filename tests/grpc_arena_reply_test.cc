// Arena replies (transport/arena_replies.h): with the interceptor on the
// echo_server (its default), large protobuf replies of shm calls are written
// straight into the server's arena and sent without a copy; everything else
// (small replies, CQ-async handlers, plain calls, forged tokens) takes
// gRPC's way; either way nothing is lost, corrupted or leaked.
#include <string>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "shmgrpc.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_fixture.h"
#include "tests/echo_lite.grpc.pb.h"
#include "tests/echo_logic.h"
#include "tests/server_process.h"

namespace shmgrpc::test {
namespace {

// Whether the style's Unary handler sends through the sync or callback API
// (the async style's is CQ-async; its ServerStream is sync).
bool UnaryWritesIntoArena(const std::string& style) { return style != "async"; }

class ArenaReplyTest : public EchoStyleTest {};

TEST_P(ArenaReplyTest, LargeUnaryRepliesAreWrittenIntoTheArena) {
  const size_t kSizes[] = {kMinArenaReplyBytes, 1 << 20, (4 << 20) - 64};
  for (size_t size : kSizes) {
    EchoResponse response;
    const grpc::Status status = UnaryEcho(stub_.get(), size, 1, &response);
    ASSERT_TRUE(status.ok()) << size << ": " << status.error_message();
    EXPECT_TRUE(PayloadIntact(response)) << size;
    EXPECT_EQ(response.payload().size(), size);
  }
  // Below the threshold: gRPC serializes, the injector copies.
  EchoResponse small;
  ASSERT_TRUE(UnaryEcho(stub_.get(), 4096, 2, &small).ok());
  EXPECT_TRUE(PayloadIntact(small));

  EXPECT_EQ(CallsOnShm(), 4u);
  const ServerStatsReply stats = FetchServerStats(server_->target());
  EXPECT_EQ(stats.arena_replies(), UnaryWritesIntoArena(GetParam()) ? 3u : 0u);
  // The client gave every reply block back.
  EXPECT_TRUE(WaitFor(
      [&] { return FetchServerStats(server_->target()).blocks_in_use() == 0; },
      absl::Seconds(5)));
}

TEST_P(ArenaReplyTest, LargeServerStreamRepliesAreWrittenIntoTheArena) {
  constexpr int kReplies = 20;
  EchoRequest request;
  FillRequest(&request, 16, 0);
  request.set_reply_count(kReplies);
  request.set_reply_bytes(256 << 10);
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(10)));
  auto reader = stub_->ServerStream(&context, request);
  EchoResponse response;
  int replies = 0;
  while (reader->Read(&response)) {
    EXPECT_TRUE(PayloadIntact(response)) << replies;
    EXPECT_EQ(response.payload().size(), 256u << 10);
    ++replies;
  }
  const grpc::Status status = reader->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(replies, kReplies);
  EXPECT_EQ(FetchServerStats(server_->target()).arena_replies(),
            static_cast<uint64_t>(kReplies));
}

// Replies written into the arena but never sent (the client cancelled while
// the handler kept writing, its window full) are freed when gRPC drops them.
TEST_P(ArenaReplyTest, CancelledStreamLeavesNoArenaBlockBehind) {
  EchoRequest request;
  FillRequest(&request, 16, 0);
  request.set_reply_count(1000);
  request.set_reply_bytes(512 << 10);
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(10)));
  auto reader = stub_->ServerStream(&context, request);
  EchoResponse response;
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(reader->Read(&response)) << i;
    EXPECT_TRUE(PayloadIntact(response)) << i;
  }
  // Let the handler fill the window and write ahead of it.
  absl::SleepFor(absl::Milliseconds(200));
  context.TryCancel();
  while (reader->Read(&response)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  ServerStatsReply stats;
  EXPECT_TRUE(WaitFor(
      [&] {
        stats = FetchServerStats(server_->target());
        return stats.calls_active() == 0 && stats.blocks_in_use() == 0;
      },
      absl::Seconds(5)))
      << "calls_active=" << stats.calls_active()
      << " blocks_in_use=" << stats.blocks_in_use();
  EXPECT_GE(stats.arena_replies(), 2u);
  // The session still works.
  EchoResponse after;
  ASSERT_TRUE(UnaryEcho(stub_.get(), 1 << 20, 3, &after).ok());
  EXPECT_TRUE(PayloadIntact(after));
}

// A handler that gzips its reply: gRPC 1.51's in-process transport does not
// compress, so the arena slice reaches the injector as it is and is sent
// without a copy; the client gets the plain message, intact.
TEST_P(ArenaReplyTest, CompressedLargeReplyArrivesIntactAndFreesItsBlock) {
  EchoResponse response;
  const grpc::Status status =
      CompressedUnaryEcho(stub_.get(), 1 << 20, 4, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(PayloadIntact(response));
  EXPECT_EQ(CallsOnShm(), 1u);
  ServerStatsReply stats;
  EXPECT_TRUE(WaitFor(
      [&] {
        stats = FetchServerStats(server_->target());
        return stats.blocks_in_use() == 0;
      },
      absl::Seconds(5)))
      << "blocks_in_use=" << stats.blocks_in_use();
  EXPECT_EQ(stats.arena_replies(), UnaryWritesIntoArena(GetParam()) ? 1u : 0u);
}

INSTANTIATE_TEST_SUITE_P(Styles, ArenaReplyTest,
                         ::testing::Values("sync", "callback", "async"));

// A client killed while the server streams large replies to it: gRPC may
// still hold arena slices when the session reclaims its arena, and drops
// them after. Nothing may be freed twice or leak, and the server goes on.
class ArenaReplyClientDeathTest : public ::testing::TestWithParam<std::string> {
};

TEST_P(ArenaReplyClientDeathTest, KilledMidStreamLeavesTheServerClean) {
  testing::ServerProcess server(GetParam());
  ASSERT_TRUE(server.status().ok()) << server.status();
  testing::ChildProcess client(
      {testing::RunfilePath("tests/echo_client"), "--target=" + server.target(),
       "--mode=server-stream", "--size=262144"},
      "in-call");
  ASSERT_TRUE(client.status().ok()) << client.status();
  EXPECT_GE(FetchServerStats(server.target()).arena_replies(), 100u);
  client.Kill();
  EXPECT_EQ(ExpectServerIdle(server).sessions_closed(), 1u);
  ExpectServerStillServesShm(server.target());
  auto stub = EchoService::NewStub(CreateChannel(server.target()));
  EchoResponse response;
  ASSERT_TRUE(UnaryEcho(stub.get(), 1 << 20, 9, &response).ok());
  EXPECT_TRUE(PayloadIntact(response));
}

INSTANTIATE_TEST_SUITE_P(Styles, ArenaReplyClientDeathTest,
                         ::testing::Values("sync", "callback"));

// Plain calls carry no session token, and one a client makes up names no
// session: their replies take gRPC's way. A shm client's own value for the
// key never reaches the handler.
TEST(ArenaReplyKeyTest, PlainCallsAndForgedTokensAreLeftToGrpc) {
  testing::ServerProcess server("sync");
  ASSERT_TRUE(server.status().ok()) << server.status();
  auto plain = EchoService::NewStub(
      grpc::CreateChannel(server.target(), grpc::InsecureChannelCredentials()));
  auto shm = EchoService::NewStub(CreateChannel(server.target()));
  const std::string forged = "1:1";
  for (auto* stub : {plain.get(), shm.get()}) {
    EchoRequest request;
    FillRequest(&request, 1 << 20, 5);
    request.set_add_metadata(true);
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(10)));
    context.AddMetadata(transport::kReplyToKey, forged);
    EchoResponse response;
    const grpc::Status status = stub->Unary(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_TRUE(PayloadIntact(response));
    auto it = response.request_metadata().find(transport::kReplyToKey);
    ASSERT_NE(it, response.request_metadata().end());
    if (stub == plain.get()) {
      EXPECT_EQ(it->second, forged);
      EXPECT_EQ(FetchServerStats(server.target()).arena_replies(), 0u);
    } else {
      EXPECT_NE(it->second, forged) << "the client's value reached the handler";
      EXPECT_EQ(FetchServerStats(server.target()).arena_replies(), 1u);
    }
  }
}

// A lite-runtime method (not in the descriptor pool) is written into the
// arena when listed in the factory's protobuf_methods, as echo_server does.
TEST(ArenaReplyKeyTest, ListedLiteMethodsAreWrittenIntoTheArena) {
  testing::ServerProcess server("sync");
  ASSERT_TRUE(server.status().ok()) << server.status();
  Options options;
  options.protobuf_methods = {kLiteEchoMethod};
  auto stub =
      lite::LiteEchoService::NewStub(CreateChannel(server.target(), options));
  lite::LiteRequest request;
  request.set_payload(std::string(64 << 10, 'l'));
  request.set_seq(3);
  lite::LiteReply reply;
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(10)));
  const grpc::Status status = stub->Echo(&context, request, &reply);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(reply.payload(), request.payload());
  EXPECT_EQ(reply.seq(), 3);
  EXPECT_NE(reply.peer_pid(), "");  // over shm
  EXPECT_EQ(FetchServerStats(server.target()).arena_replies(), 1u);
}

TEST(ArenaReplyKeyTest, ServerWithoutTheInterceptorCopiesReplies) {
  testing::ServerProcess server("sync", {"--no_arena_replies"});
  ASSERT_TRUE(server.status().ok()) << server.status();
  auto stub = EchoService::NewStub(CreateChannel(server.target()));
  EchoResponse response;
  ASSERT_TRUE(UnaryEcho(stub.get(), 1 << 20, 1, &response).ok());
  EXPECT_TRUE(PayloadIntact(response));
  EXPECT_NE(response.peer_pid(), "");  // over shm
  EXPECT_EQ(FetchServerStats(server.target()).arena_replies(), 0u);
}

}  // namespace
}  // namespace shmgrpc::test
