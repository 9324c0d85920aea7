// Flow-control windows on their own: limits, credit, close, and the property
// the design relies on: a sender and a receiver that only ever exchange
// credits the ReceiveWindow hands out never deadlock, whatever the sizes.
#include "transport/flow_window.h"

#include <atomic>
#include <deque>
#include <mutex>
#include <random>
#include <thread>

#include "gtest/gtest.h"

namespace shmgrpc::transport {
namespace {

TEST(FlowWindowTest, CreditRoundTripsThroughTheAuxWord) {
  const Credit credit{37, (uint64_t{1} << 40) + 5};
  const Credit decoded = DecodeCredit(EncodeCredit(credit));
  EXPECT_EQ(decoded.messages, 37u);
  EXPECT_EQ(decoded.bytes, credit.bytes);
  // Out-of-range values are clamped, never wrapped into small ones.
  const Credit huge = DecodeCredit(EncodeCredit({1u << 20, ~0ull}));
  EXPECT_EQ(huge.messages, 0xffffu);
  EXPECT_EQ(huge.bytes, (uint64_t{1} << 48) - 1);
}

TEST(FlowWindowTest, FullWindowWaitsUntilCreditOrDeadline) {
  SendWindow window(/*max_bytes=*/1000, /*max_messages=*/4);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(window.WaitForRoom(absl::Now()).ok());
    window.OnSent(10);
  }
  EXPECT_FALSE(window.HasRoom()) << "4 messages is the limit";
  const absl::Status timed_out =
      window.WaitForRoom(absl::Now() + absl::Milliseconds(20));
  EXPECT_EQ(timed_out.code(), absl::StatusCode::kDeadlineExceeded);
  std::thread credit([&] {
    absl::SleepFor(absl::Milliseconds(20));
    window.OnCredit({1, 10});
  });
  EXPECT_TRUE(window.WaitForRoom(absl::InfiniteFuture()).ok());
  credit.join();
  // Bytes limit too: one message may cross it, the next waits.
  SendWindow bytes(/*max_bytes=*/100, /*max_messages=*/64);
  bytes.OnSent(150);
  EXPECT_FALSE(bytes.HasRoom());
  bytes.OnCredit({1, 1000});  // over-credit is clamped to what was sent
  EXPECT_TRUE(bytes.HasRoom());
  bytes.OnSent(99);
  EXPECT_TRUE(bytes.HasRoom()) << "99 of 100 bytes in flight";
}

TEST(FlowWindowTest, CloseFailsWaitersNowAndLater) {
  SendWindow window(10, 1);
  window.OnSent(1);
  std::thread closer([&] {
    absl::SleepFor(absl::Milliseconds(20));
    window.Close();
  });
  EXPECT_EQ(window.WaitForRoom(absl::InfiniteFuture()).code(),
            absl::StatusCode::kCancelled);
  closer.join();
  EXPECT_EQ(window.WaitForRoom(absl::InfiniteFuture()).code(),
            absl::StatusCode::kCancelled);
}

TEST(FlowWindowTest, RandomSizesAndPacesNeverDeadlock) {
  // Messages up to 3x the byte window, a receiver that consumes at random
  // moments: every message must get through.
  constexpr uint64_t kWindowBytes = 64 << 10;
  constexpr uint64_t kWindowMessages = 8;
  constexpr int kMessages = 20000;
  SendWindow send(kWindowBytes, kWindowMessages);
  ReceiveWindow receive(kWindowBytes, kWindowMessages);
  std::mutex mu;
  std::deque<uint64_t> in_flight;  // sizes sent, not yet consumed
  std::atomic<bool> sender_done{false};
  std::thread sender([&] {
    std::mt19937 random(1);
    for (int i = 0; i < kMessages; ++i) {
      ASSERT_TRUE(send.WaitForRoom(absl::Now() + absl::Seconds(10)).ok())
          << "deadlocked at message " << i;
      const uint64_t size = random() % (3 * kWindowBytes);
      send.OnSent(size);
      std::lock_guard<std::mutex> lock(mu);
      in_flight.push_back(size);
    }
    sender_done = true;
  });
  std::mt19937 random(2);
  int consumed = 0;
  while (consumed < kMessages) {
    uint64_t size;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (in_flight.empty()) {
        if (sender_done && consumed < kMessages) break;
        continue;
      }
      size = in_flight.front();
      in_flight.pop_front();
    }
    if (random() % 64 == 0) std::this_thread::yield();
    if (auto credit = receive.OnConsumed(size)) send.OnCredit(*credit);
    ++consumed;
  }
  sender.join();
  EXPECT_EQ(consumed, kMessages);
}

}  // namespace
}  // namespace shmgrpc::transport
