// Every pair of wait strategies (client side × server side: notify, poll,
// periodic) carries unary calls and a bidi stream over shm, also after the
// link went idle, and ends with nothing held. Unary calls in flight, which
// decide whether the session threads spin, are counted right on both sides.
//
// Each side picks its own strategy, so a producer must ring the doorbell
// exactly when its consumer sleeps on it, whatever the producer itself does
// while it waits. A mistake there hangs calls (a missed wake-up) or leaves
// them slow by a sleep; only mixed pairs show it, and neither the shm-level
// tests (one strategy per pair of endpoints) nor ab_bench (the same strategy
// on both sides) mix them.
#include <atomic>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "shm/wait_options.h"
#include "shmgrpc.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_fixture.h"
#include "tests/echo_logic.h"
#include "tests/server_process.h"

namespace shmgrpc::test {
namespace {

// (client strategy, server strategy)
using StrategyPair = std::tuple<std::string, std::string>;

class WaitStrategyTest : public ::testing::TestWithParam<StrategyPair> {
 protected:
  void SetUp() override {
    const auto& [client_wait, server_wait] = GetParam();
    server_ = std::make_unique<testing::ServerProcess>(
        "sync", std::vector<std::string>{"--wait=" + server_wait});
    ASSERT_TRUE(server_->status().ok()) << server_->status();
    Options options;
    absl::StatusOr<shm::WaitStrategy> strategy =
        shm::ParseWaitStrategy(client_wait);
    ASSERT_TRUE(strategy.ok()) << strategy.status();
    options.wait.strategy = *strategy;
    channel_ = CreateChannel(server_->target(), options);
    stub_ = EchoService::NewStub(channel_);
  }

  std::unique_ptr<testing::ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<EchoService::Stub> stub_;
};

TEST_P(WaitStrategyTest, UnaryAndBidiOverShmAlsoAfterIdle) {
  constexpr int kUnaryCalls = 100;
  constexpr int kBidiMessages = 300;
  // Twice: the second round starts after the link went idle long enough for
  // a notify side to stop spinning and sleep on its doorbell.
  for (int round = 0; round < 2; ++round) {
    if (round == 1) absl::SleepFor(absl::Milliseconds(50));
    const absl::Time start = absl::Now();
    for (int i = 0; i < kUnaryCalls; ++i) {
      EchoResponse response;
      const size_t size = i % 10 == 0 ? 65536 : 64;
      const grpc::Status status = UnaryEcho(stub_.get(), size, i, &response);
      ASSERT_TRUE(status.ok())
          << round << "/" << i << ": " << status.error_message();
      ASSERT_EQ(response.seq(), i);
      ASSERT_TRUE(PayloadIntact(response)) << i;
    }
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(20)));
    auto stream = stub_->Bidi(&context);
    for (int i = 0; i < kBidiMessages; ++i) {
      EchoRequest request;
      FillRequest(&request, i % 7 == 0 ? 4096 : 64, i);
      ASSERT_TRUE(stream->Write(request)) << round << "/" << i;
      EchoResponse response;
      ASSERT_TRUE(stream->Read(&response)) << round << "/" << i;
      ASSERT_EQ(response.seq(), i);
      ASSERT_TRUE(PayloadIntact(response)) << i;
    }
    ASSERT_TRUE(stream->WritesDone());
    const grpc::Status status = stream->Finish();
    ASSERT_TRUE(status.ok()) << status.error_message();
    // A missed doorbell shows as a call that waits for the next unrelated
    // frame or for its deadline: 700 round trips take ~0.1 s here even with
    // periodic sleeps on both sides; 10 s means something waited on nothing.
    EXPECT_LT(absl::Now() - start, absl::Seconds(10)) << "round " << round;
  }
  EXPECT_EQ(GetChannelStats(channel_.get())->calls_on_shm,
            2u * (kUnaryCalls + 1));
  channel_.reset();
  stub_.reset();
  ExpectServerIdle(*server_);
  EXPECT_EQ(server_->Stop(), 0) << "echo_server did not exit cleanly";
}

INSTANTIATE_TEST_SUITE_P(
    ClientByServer, WaitStrategyTest,
    ::testing::Combine(::testing::Values("notify", "poll", "periodic"),
                       ::testing::Values("notify", "poll", "periodic")),
    [](const ::testing::TestParamInfo<StrategyPair>& info) {
      return absl::StrCat("client_", std::get<0>(info.param), "_server_",
                          std::get<1>(info.param));
    });

// Calls awaiting an answer are counted on both sides, and nothing after:
// unary calls while they run, however they end (answered, failed, past
// their deadline, cancelled, retried); streams while a message sent waits
// for one back, so an open stream that idles is not counted. The counts
// decide whether the session threads spin
// (WaitOptions::max_busy_streams_for_spin), so a leaked count would leave a
// session sleeping on its doorbell for good.
TEST(BusyCallsTest, CountedOnBothSidesWhileAnAnswerIsAwaitedAndNeverLeaked) {
  testing::ServerProcess server("sync", {});
  ASSERT_TRUE(server.status().ok()) << server.status();
  grpc::ChannelArguments args;
  args.SetServiceConfigJSON(R"({"methodConfig": [{
    "name": [{"service": "shmgrpc.test.EchoService", "method": "Unary"}],
    "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s",
                    "maxBackoff": "0.05s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]}}]})");
  auto channel = CreateChannel(server.target(), Options(), args);
  auto stub = EchoService::NewStub(channel);
  auto client_count = [&] {
    return GetChannelStats(channel.get())->busy_calls;
  };

  // A stream open throughout, carried over shm: counted while its ping
  // waits for the pong (the handler takes 500 ms), not once it came.
  grpc::ClientContext stream_context;
  auto stream = stub->Bidi(&stream_context);
  EchoRequest ping;
  FillRequest(&ping, 64, 1);
  ping.set_delay_ms(500);
  ASSERT_TRUE(stream->Write(ping));
  EXPECT_EQ(client_count(), 1u);
  EXPECT_TRUE(WaitFor(
      [&] { return FetchServerStats(server.target()).busy_calls() == 1; },
      absl::Seconds(5)));
  EchoResponse pong;
  ASSERT_TRUE(stream->Read(&pong));
  EXPECT_EQ(client_count(), 0u);
  EXPECT_TRUE(WaitFor(
      [&] { return FetchServerStats(server.target()).busy_calls() == 0; },
      absl::Seconds(5)));

  constexpr int kHeld = 3;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::thread> callers;
  std::atomic<int> cancelled{0};
  for (int i = 0; i < kHeld; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    contexts.back()->set_deadline(In(absl::Seconds(30)));
    callers.emplace_back([&, context = contexts.back().get()] {
      EchoRequest request;
      request.set_hang(true);
      EchoResponse response;
      if (stub->Unary(context, request, &response).error_code() ==
          grpc::StatusCode::CANCELLED) {
        ++cancelled;
      }
    });
  }
  {
    HangingCall expiring(stub.get(), absl::Milliseconds(500));
    ASSERT_TRUE(WaitFor(
        [&] {
          return FetchServerStats(server.target()).handlers_hanging() ==
                 kHeld + 1;
        },
        absl::Seconds(5)));
    EXPECT_EQ(client_count(), kHeld + 1u);
    EXPECT_EQ(FetchServerStats(server.target()).busy_calls(), kHeld + 1u);
    expiring.Join();
    EXPECT_EQ(expiring.status().error_code(),
              grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  for (auto& context : contexts) context->TryCancel();
  for (std::thread& caller : callers) caller.join();
  EXPECT_EQ(cancelled.load(), kHeld);

  // Answered, failed, and failed once then retried.
  EchoResponse response;
  EXPECT_TRUE(UnaryEcho(stub.get(), 4096, 2, &response).ok());
  {
    EchoRequest request;
    request.set_error_code(grpc::StatusCode::NOT_FOUND);
    grpc::ClientContext context;
    EXPECT_EQ(stub->Unary(&context, request, &response).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  {
    EchoRequest request;
    request.set_attempt_key("in-flight-count");
    request.set_fail_attempts(1);
    grpc::ClientContext context;
    EXPECT_TRUE(stub->Unary(&context, request, &response).ok());
    EXPECT_EQ(response.attempts_seen(), 2);
  }
  EXPECT_EQ(client_count(), 0u);
  ServerStatsReply stats;
  EXPECT_TRUE(WaitFor(
      [&] {
        stats = FetchServerStats(server.target());
        return stats.calls_active() == 1;  // the stream
      },
      absl::Seconds(5)));
  EXPECT_EQ(stats.busy_calls(), 0u);

  ASSERT_TRUE(stream->WritesDone());
  EXPECT_TRUE(stream->Finish().ok());
  const ClientStats client = *GetChannelStats(channel.get());
  EXPECT_EQ(client.calls_on_shm, kHeld + 5u);  // + expiring, 3 answered, stream
  EXPECT_EQ(client.shm_retries, 1u);
}

}  // namespace
}  // namespace shmgrpc::test
