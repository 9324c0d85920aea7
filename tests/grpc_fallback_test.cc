// Shared memory runs out: tiny arenas under 64 concurrent bidi streams, a
// unary request that cannot fit, a message larger than the whole arena, and
// a handler that stalls. Nothing is lost, nothing is stuck, and traffic goes
// back to shared memory when it frees up.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "codec/message_codec.h"
#include "gtest/gtest.h"
#include "shmgrpc.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_bidi_reactor.h"
#include "tests/echo_fixture.h"
#include "tests/echo_logic.h"
#include "tests/server_process.h"

namespace shmgrpc::test {
namespace {

using codec::SerializedSize;
using testing::ServerProcess;

constexpr size_t kTinyArena = 256 << 10;

Options TinyArenaOptions() {
  Options options;
  options.arena_bytes = kTinyArena;
  return options;
}

// SHMGRPC_EXHAUSTION_SECONDS shortens or lengthens the soak (default 20).
absl::Duration SoakDuration() {
  int seconds = 20;
  if (const char* env = std::getenv("SHMGRPC_EXHAUSTION_SECONDS")) {
    if (!absl::SimpleAtoi(env, &seconds) || seconds <= 0) seconds = 20;
  }
  return absl::Seconds(seconds);
}

struct StreamResult {
  int64_t messages = 0;
  std::string failure;  // empty: every message came back once, in order
};

// One bidi stream: keeps up to 4 requests of 4-128 KiB in flight until
// `until`, and checks that every echo comes back once, in order, intact.
StreamResult RunSoakStream(EchoService::Stub& stub, int stream_index,
                           absl::Time until) {
  StreamResult result;
  grpc::ClientContext context;
  const absl::Time deadline = until + absl::Seconds(30);
  context.set_deadline(absl::ToChronoTime(deadline));
  auto stream = stub.Bidi(&context);
  std::mt19937 random(stream_index);
  std::uniform_int_distribution<size_t> size(4 << 10, 128 << 10);
  int64_t written = 0, read = 0;
  auto read_one = [&]() -> bool {
    EchoResponse response;
    if (!stream->Read(&response)) {
      result.failure = "stream ended early";
      return false;
    }
    if (response.seq() != read || !PayloadIntact(response) ||
        response.messages_seen() != read + 1) {
      result.failure = "echo " + std::to_string(read) + " out of order, " +
                       "duplicated or corrupt (got seq " +
                       std::to_string(response.seq()) + ")";
      return false;
    }
    ++read;
    return true;
  };
  while (absl::Now() < until) {
    if (written - read < 4) {
      EchoRequest request;
      FillRequest(&request, size(random), written);
      if (!stream->Write(request)) {
        result.failure = "write failed";
        break;
      }
      ++written;
    } else if (!read_one()) {
      break;
    }
  }
  if (result.failure.empty()) {
    stream->WritesDone();
    while (read < written && read_one()) {
    }
  }
  const grpc::Status status = stream->Finish();
  if (!status.ok()) {
    // Also after a failed read or write: the status says why it ended.
    result.failure +=
        (result.failure.empty() ? "" : ", ") + std::string("status ") +
        std::to_string(status.error_code()) + ": " + status.error_message();
  }
  if (result.failure.empty() && absl::Now() > deadline) {
    result.failure = "past its deadline";
  }
  result.messages = read;
  return result;
}

// Runs `streams` soak streams on `stub` until `until` (seeds from
// `first_seed`), expects every one to succeed, and returns the messages
// echoed in all.
int64_t RunSoakStreams(EchoService::Stub& stub, int streams, int first_seed,
                       absl::Time until) {
  std::vector<StreamResult> results(streams);
  std::vector<std::thread> threads;
  for (int i = 0; i < streams; ++i) {
    threads.emplace_back(
        [&, i] { results[i] = RunSoakStream(stub, first_seed + i, until); });
  }
  for (std::thread& t : threads) t.join();
  int64_t messages = 0;
  for (int i = 0; i < streams; ++i) {
    EXPECT_TRUE(results[i].failure.empty())
        << "stream " << i << ": " << results[i].failure;
    messages += results[i].messages;
  }
  return messages;
}

TEST(ExhaustionTest, TinyArenas64BidiStreamsLoseNothingAndReturnToShm) {
  constexpr int kStreams = 64;
  ServerProcess server("sync", {"--arena_bytes=" + std::to_string(kTinyArena)});
  ASSERT_TRUE(server.status().ok()) << server.status();
  auto channel = CreateChannel(server.target(), TinyArenaOptions());
  auto stub = EchoService::NewStub(channel);

  const absl::Duration soak = SoakDuration();
  const absl::Time until = absl::Now() + soak;
  std::thread progress([&] {
    while (absl::Now() < until) {
      absl::SleepFor(absl::Seconds(5));
      const ClientStats stats = *GetChannelStats(channel.get());
      std::fprintf(stderr, "soak: %lu shm messages, %lu inline so far\n",
                   static_cast<unsigned long>(stats.session.messages_sent),
                   static_cast<unsigned long>(stats.session.inline_sent));
    }
  });
  const int64_t messages = RunSoakStreams(*stub, kStreams, 0, until);
  progress.join();

  const ClientStats client = *GetChannelStats(channel.get());
  const ServerStatsReply server_stats = FetchServerStats(server.target());
  EXPECT_EQ(client.calls_on_shm, static_cast<uint64_t>(kStreams));
  EXPECT_GT(client.inline_arena_full + client.inline_too_large, 0u)
      << "the client's arena never ran out: the test proves nothing";
  EXPECT_GT(server_stats.inline_arena_full() + server_stats.inline_too_large(),
            0u);
  std::printf(
      "soak %s: %ld messages each way on %d streams; client: chained=%lu "
      "inline arena_full=%lu too_large=%lu; server: chained=%lu inline "
      "arena_full=%lu too_large=%lu\n",
      absl::FormatDuration(soak).c_str(), static_cast<long>(messages), kStreams,
      static_cast<unsigned long>(client.messages_chained),
      static_cast<unsigned long>(client.inline_arena_full),
      static_cast<unsigned long>(client.inline_too_large),
      static_cast<unsigned long>(server_stats.messages_chained()),
      static_cast<unsigned long>(server_stats.inline_arena_full()),
      static_cast<unsigned long>(server_stats.inline_too_large()));

  // Afterwards: traffic is back on shared memory, and nothing is held.
  const uint64_t inline_before = client.session.inline_sent;
  const uint64_t sent_before = client.session.messages_sent;
  for (int i = 0; i < 20; ++i) {
    EchoResponse response;
    ASSERT_TRUE(UnaryEcho(stub.get(), 4096, i, &response).ok());
    ASSERT_TRUE(PayloadIntact(response));
  }
  const ClientStats after = *GetChannelStats(channel.get());
  EXPECT_EQ(after.calls_on_shm, static_cast<uint64_t>(kStreams) + 20);
  EXPECT_EQ(after.session.inline_sent, inline_before);
  EXPECT_GE(after.session.messages_sent, sent_before + 60);  // hdr+msg+close
  EXPECT_TRUE(WaitFor(
      [&] {
        return GetChannelStats(channel.get())->session.arena.blocks_in_use == 0;
      },
      absl::Seconds(5)))
      << "client blocks still in use";
  ServerStatsReply last;
  EXPECT_TRUE(WaitFor(
      [&] {
        last = FetchServerStats(server.target());
        return last.blocks_in_use() == 0 && last.calls_active() == 0;
      },
      absl::Seconds(5)))
      << "server: " << last.blocks_in_use() << " blocks and "
      << last.calls_active() << " calls still in use";
}

TEST(ExhaustionTest, TinyRingsUnderManyStreamsNeverDeadlock) {
  // 8-slot rings both ways: every sender, the session threads' credits
  // included, keeps finding the ring full. Nothing may wedge.
  constexpr int kStreams = 32;
  ServerProcess server("sync", {"--ring_slots=8"});
  ASSERT_TRUE(server.status().ok()) << server.status();
  Options options;
  options.ring_slots = 8;
  auto channel = CreateChannel(server.target(), options);
  auto stub = EchoService::NewStub(channel);
  const int64_t messages =
      RunSoakStreams(*stub, kStreams, 100, absl::Now() + absl::Seconds(5));
  const ClientStats stats = *GetChannelStats(channel.get());
  EXPECT_EQ(stats.calls_on_shm, static_cast<uint64_t>(kStreams));
  EXPECT_GT(stats.session.ring_full_waits, 0u) << "the rings never filled";
  std::printf("tiny rings: %ld messages each way, %lu ring-full waits\n",
              static_cast<long>(messages),
              static_cast<unsigned long>(stats.session.ring_full_waits));
}

TEST(FallbackTest, UnaryThatCannotFitGoesPlainAndSucceeds) {
  ServerProcess server("sync", {"--arena_bytes=" + std::to_string(kTinyArena)});
  ASSERT_TRUE(server.status().ok()) << server.status();
  auto channel = CreateChannel(server.target(), TinyArenaOptions());
  auto stub = EchoService::NewStub(channel);
  EchoResponse response;
  const grpc::Status status =
      UnaryEcho(stub.get(), 1 << 20, 1, &response);  // 4x the arena
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(PayloadIntact(response));
  EXPECT_EQ(response.payload().size(), size_t{1} << 20);
  const ClientStats stats = *GetChannelStats(channel.get());
  EXPECT_EQ(stats.calls_plain_too_large, 1u);
  EXPECT_EQ(stats.calls_on_shm, 0u);
}

// A unary request the arena could hold, but not what is free of it now (a
// stalled stream's message holds the rest), goes plain and succeeds; once
// the stream has drained, the same request goes over shm again.
TEST(FallbackTest, UnaryThatFindsTheArenaFullGoesPlainThenBackToShm) {
  ServerProcess server("sync", {"--arena_bytes=" + std::to_string(kTinyArena)});
  ASSERT_TRUE(server.status().ok()) << server.status();
  auto channel = CreateChannel(server.target(), TinyArenaOptions());
  auto stub = EchoService::NewStub(channel);
  constexpr size_t kLarge = 160 << 10;  // fits 256 KiB once, not twice
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(30)));
  auto stream = stub->Bidi(&context);
  EchoRequest message;
  FillRequest(&message, 64, 1);
  message.set_delay_ms(1500);  // the handler stalls on it...
  ASSERT_TRUE(stream->Write(message));
  // (Once the server has released the small blocks so far: each size class
  // of them holds a 64 KiB page of the 4, and the next message would not
  // have found 3 pages in a row.)
  auto blocks_in_use = [&] {
    return GetChannelStats(channel.get())->session.arena.blocks_in_use;
  };
  ASSERT_TRUE(WaitFor([&] { return blocks_in_use() == 0; }, absl::Seconds(5)));
  FillRequest(&message, kLarge, 2);  // ...so this one stays in the arena
  ASSERT_TRUE(stream->Write(message));
  ASSERT_EQ(blocks_in_use(), 1u);

  EchoResponse response;
  grpc::Status status = UnaryEcho(stub.get(), kLarge, 3, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(PayloadIntact(response));
  ClientStats stats = *GetChannelStats(channel.get());
  EXPECT_EQ(stats.calls_plain_arena_full, 1u);
  EXPECT_EQ(stats.calls_on_shm, 1u);  // the stream

  stream->WritesDone();
  for (int64_t seq : {1, 2}) {
    ASSERT_TRUE(stream->Read(&response)) << seq;
    EXPECT_EQ(response.seq(), seq);
    EXPECT_TRUE(PayloadIntact(response));
  }
  status = stream->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  status = UnaryEcho(stub.get(), kLarge, 4, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(PayloadIntact(response));
  stats = *GetChannelStats(channel.get());
  EXPECT_EQ(stats.calls_plain_arena_full, 1u);
  EXPECT_EQ(stats.calls_on_shm, 2u);
}

// A server at Options::max_sessions refuses further clients: their calls go
// plain and succeed, and such a client gets shm once a session closes (its
// reconnect backoff retries the handshake).
TEST(FallbackTest, ServerAtItsSessionLimitSendsNewClientsPlainUntilOneLeaves) {
  ServerProcess server("sync", {"--max_sessions=2"});
  ASSERT_TRUE(server.status().ok()) << server.status();
  auto first = CreateChannelWithOwnSession(server.target());
  auto second = CreateChannelWithOwnSession(server.target());
  ExpectEchoOver(first, true, "first session");
  ExpectEchoOver(second, true, "second session");
  auto third = CreateChannelWithOwnSession(server.target());
  ExpectEchoOver(third, false, "third client, over the limit");
  const ServerStatsReply at_limit = FetchServerStats(server.target());
  EXPECT_EQ(at_limit.sessions_open(), 2u);
  EXPECT_GE(at_limit.handshakes_refused(), 1u);

  first.reset();  // its session closes and frees a slot
  auto stub = EchoService::NewStub(third);
  EXPECT_TRUE(WaitFor(
      [&] {
        EchoResponse response;
        return UnaryEcho(stub.get(), 64, 1, &response).ok() &&
               !response.peer_pid().empty();
      },
      absl::Seconds(5)))
      << "the third client never got the freed session";
  EXPECT_EQ(FetchServerStats(server.target()).sessions_open(), 2u);
  stub.reset();
  second.reset();
  third.reset();
  ExpectServerIdle(server);
  EXPECT_EQ(server.Stop(), 0) << "echo_server did not exit cleanly";
}

TEST(FallbackTest, StreamMessagesLargerThanTheArenaTravelInline) {
  ServerProcess server("sync", {"--arena_bytes=" + std::to_string(kTinyArena)});
  ASSERT_TRUE(server.status().ok()) << server.status();
  auto channel = CreateChannel(server.target(), TinyArenaOptions());
  auto stub = EchoService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(30)));
  auto stream = stub->Bidi(&context);
  // Large and small alternate, two in flight: order must hold across the two
  // paths. (Not all ten at once: the echo handler's replies are flow
  // controlled too, so a client that never reads would stall it, as with
  // any gRPC transport.)
  for (int i = 0; i < 10; ++i) {
    EchoRequest request;
    FillRequest(&request, i % 2 == 0 ? (1 << 20) + i : 100, i);
    ASSERT_TRUE(stream->Write(request));
    if (i % 2 == 0) continue;
    for (int j = i - 1; j <= i; ++j) {
      EchoResponse response;
      ASSERT_TRUE(stream->Read(&response));
      EXPECT_EQ(response.seq(), j);
      EXPECT_TRUE(PayloadIntact(response));
      EXPECT_EQ(response.payload().size(),
                j % 2 == 0 ? size_t{1 << 20} + j : size_t{100});
    }
  }
  stream->WritesDone();
  const grpc::Status status = stream->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  const ClientStats stats = *GetChannelStats(channel.get());
  EXPECT_EQ(stats.calls_on_shm, 1u);
  EXPECT_EQ(stats.inline_too_large, 5u);
  EXPECT_EQ(FetchServerStats(server.target()).inline_too_large(), 5u);
}

// Both sides limit blocks to 64 KiB: every larger message is chained over
// several blocks (a chained request reaches the handler as a multi-slice
// buffer; a chained reply is parsed across blocks).
class ChainedTest : public ::testing::Test {
 protected:
  static constexpr size_t kMaxBlock = 64 << 10;
  void SetUp() override {
    server_ = std::make_unique<ServerProcess>(
        "sync", std::vector<std::string>{"--max_block_bytes=" +
                                         std::to_string(kMaxBlock)});
    ASSERT_TRUE(server_->status().ok()) << server_->status();
    Options options;
    options.max_block_bytes = kMaxBlock;
    channel_ = CreateChannel(server_->target(), options);
    stub_ = EchoService::NewStub(channel_);
  }
  std::unique_ptr<ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<EchoService::Stub> stub_;
};

TEST_F(ChainedTest, LargeUnaryRequestsAndRepliesAreChainedBothWays) {
  const size_t sizes[] = {kMaxBlock - 100, kMaxBlock + 1, 1 << 20,
                          (3 << 20) + 12345};
  int chained_each_way = 0;
  for (size_t size : sizes) {
    EchoRequest request;
    FillRequest(&request, size, static_cast<int64_t>(size));
    EchoResponse response;
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(10)));
    const grpc::Status status = stub_->Unary(&context, request, &response);
    ASSERT_TRUE(status.ok()) << size << ": " << status.error_message();
    EXPECT_TRUE(PayloadIntact(response)) << size;
    EXPECT_EQ(response.payload().size(), size);
    if (SerializedSize(request) > kMaxBlock) ++chained_each_way;
  }
  const ClientStats stats = *GetChannelStats(channel_.get());
  EXPECT_EQ(stats.calls_on_shm, 4u);
  EXPECT_EQ(stats.messages_chained, uint64_t(chained_each_way));
  EXPECT_EQ(stats.inline_arena_full + stats.inline_too_large, 0u);
  const ServerStatsReply server_stats = FetchServerStats(server_->target());
  EXPECT_EQ(server_stats.messages_chained(), uint64_t(chained_each_way));
  // A reply no single block holds is left by the handler's thread, which
  // must not wait, to the session's completion thread.
  EXPECT_EQ(server_stats.replies_deferred(), uint64_t(chained_each_way));
  EXPECT_TRUE(WaitFor(
      [&] {
        return GetChannelStats(channel_.get())->session.arena.blocks_in_use ==
               0;
      },
      absl::Seconds(5)))
      << "chain blocks not all released";
}

TEST_F(ChainedTest, StreamsOfMixedSizesStayInOrder) {
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(30)));
  auto stream = stub_->Bidi(&context);
  std::mt19937 random(9);
  for (int i = 0; i < 200; ++i) {
    EchoRequest request;
    FillRequest(&request, random() % (300 << 10), i);
    ASSERT_TRUE(stream->Write(request));
    EchoResponse response;
    ASSERT_TRUE(stream->Read(&response));
    ASSERT_EQ(response.seq(), i);
    ASSERT_TRUE(PayloadIntact(response)) << i;
  }
  stream->WritesDone();
  ASSERT_TRUE(stream->Finish().ok());
  EXPECT_GT(GetChannelStats(channel_.get())->messages_chained, 100u);
}

TEST(FallbackTest, StalledHandlerBlocksTheStreamWhichThenResumes) {
  ServerProcess server("sync");
  ASSERT_TRUE(server.status().ok()) << server.status();
  Options options;  // default window: 64 messages / 1 MiB per stream
  auto channel = CreateChannel(server.target(), options);
  auto stub = EchoService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(30)));
  auto stream = stub->Bidi(&context);

  constexpr int kMessages = 300;
  std::atomic<int> written{0};
  std::thread writer([&] {
    for (int i = 0; i < kMessages; ++i) {
      EchoRequest request;
      FillRequest(&request, 1024, i);
      if (i == 0) request.set_delay_ms(1500);  // the handler stalls on it
      if (!stream->Write(request)) return;
      ++written;
    }
    stream->WritesDone();
  });
  absl::SleepFor(absl::Milliseconds(800));
  const int written_while_stalled = written.load();
  for (int i = 0; i < kMessages; ++i) {
    EchoResponse response;
    ASSERT_TRUE(stream->Read(&response)) << "response " << i;
    ASSERT_EQ(response.seq(), i);
    ASSERT_TRUE(PayloadIntact(response));
  }
  writer.join();
  const grpc::Status status = stream->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(written.load(), kMessages);
  // While the handler slept, the writer got at most about one window ahead
  // (plus what gRPC's in-process transport buffers), not all 300.
  EXPECT_LT(written_while_stalled, kMessages / 2)
      << "the writer never felt the stalled handler";
  EXPECT_GE(written_while_stalled, 1);
  std::printf("writer was %d messages ahead while the handler stalled\n",
              written_while_stalled);
}

// The callback API's StartWrite must not block its caller when the stream's
// window is full: the write is parked and OnWriteDone comes once the server's
// handler catches up.
TEST(FallbackTest, CallbackWriterIsNotBlockedByAFullWindow) {
  ServerProcess server("sync");
  ASSERT_TRUE(server.status().ok()) << server.status();
  auto channel = CreateChannel(server.target());  // window: 64 messages
  auto stub = EchoService::NewStub(channel);
  constexpr int kMessages = 300;
  const absl::Time start = absl::Now();
  EchoBidiReactor writer(stub.get(), kMessages, /*corked=*/false,
                         [](int i, EchoRequest* request) {
                           FillRequest(request, 1024, i);
                           // The handler stalls on the first message.
                           if (i == 0) request->set_delay_ms(1500);
                         });
  ASSERT_TRUE(writer.Await(absl::Seconds(30)))
      << "the stream hung: sent " << writer.sent() << ", received "
      << writer.received();
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(writer.status().ok()) << writer.status().error_message();
  EXPECT_EQ(writer.received(), kMessages);
  EXPECT_EQ(writer.errors(), 0);
  EXPECT_GE(took, absl::Milliseconds(1400));  // the handler did stall it
  // Before parking, the write that found the window full waited ~1.5 s
  // inside StartWrite.
  EXPECT_LT(writer.longest_start_write(), absl::Milliseconds(200));
  std::printf("%d messages in %s; longest StartWrite call %s\n", kMessages,
              absl::FormatDuration(took).c_str(),
              absl::FormatDuration(writer.longest_start_write()).c_str());
  EXPECT_EQ(GetChannelStats(channel.get())->calls_on_shm, 1u);
}

}  // namespace
}  // namespace shmgrpc::test
