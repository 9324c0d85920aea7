// Flow-control windows on their own: limits, credit, close, and the property
// the design relies on: a sender and a receiver that only ever exchange
// credits the ReceiveWindow hands out never deadlock, whatever the sizes,
// also when the two sides' windows differ.
#include "transport/flow_window.h"

#include <atomic>
#include <deque>
#include <mutex>
#include <optional>
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

TEST(FlowWindowTest, ASenderThatWaitsIsCreditedAtOnce) {
  // The receiver's own threshold is half of 64 messages; a sender whose
  // window holds 4 says so with its 4th message, and gets credit for all 4
  // as soon as that one is consumed.
  SendWindow send(/*max_bytes=*/1 << 20, /*max_messages=*/4);
  ReceiveWindow receive(/*max_bytes=*/1 << 20, /*max_messages=*/64);
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(send.OnSent(10)) << i;
  EXPECT_TRUE(send.OnSent(10)) << "the 4th message fills the window";
  for (int i = 0; i < 3; ++i) {
    EXPECT_FALSE(receive.OnConsumed(10, /*sender_waits=*/false).has_value());
  }
  const std::optional<Credit> credit =
      receive.OnConsumed(10, /*sender_waits=*/true);
  ASSERT_TRUE(credit.has_value());
  EXPECT_EQ(credit->messages, 4u);
  EXPECT_EQ(credit->bytes, 40u);
  send.OnCredit(*credit);
  EXPECT_TRUE(send.HasRoom());
}

// Messages up to 3x the byte window, a receiver that consumes at random
// moments: every message must get through, also when the two sides' windows
// differ (each side sizes its own).
void ExpectNoDeadlock(uint64_t send_bytes, uint64_t send_messages,
                      uint64_t receive_bytes, uint64_t receive_messages) {
  constexpr int kMessages = 20000;
  SendWindow send(send_bytes, send_messages);
  ReceiveWindow receive(receive_bytes, receive_messages);
  struct Sent {
    uint64_t size;
    bool window_full;
  };
  std::mutex mu;
  std::deque<Sent> in_flight;  // sent, not yet consumed
  std::atomic<bool> sender_done{false};
  std::thread sender([&] {
    std::mt19937 random(1);
    for (int i = 0; i < kMessages; ++i) {
      ASSERT_TRUE(send.WaitForRoom(absl::Now() + absl::Seconds(10)).ok())
          << "deadlocked at message " << i;
      const uint64_t size = random() % (3 * send_bytes);
      const bool window_full = send.OnSent(size);
      std::lock_guard<std::mutex> lock(mu);
      in_flight.push_back({size, window_full});
    }
    sender_done = true;
  });
  std::mt19937 random(2);
  int consumed = 0;
  while (consumed < kMessages) {
    Sent sent;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (in_flight.empty()) {
        if (sender_done && consumed < kMessages) break;
        continue;
      }
      sent = in_flight.front();
      in_flight.pop_front();
    }
    if (random() % 64 == 0) std::this_thread::yield();
    if (auto credit = receive.OnConsumed(sent.size, sent.window_full)) {
      send.OnCredit(*credit);
    }
    ++consumed;
  }
  sender.join();
  EXPECT_EQ(consumed, kMessages);
}

TEST(FlowWindowTest, RandomSizesAndPacesNeverDeadlock) {
  ExpectNoDeadlock(64 << 10, 8, 64 << 10, 8);
}

TEST(FlowWindowTest, WindowsOfDifferentSizesNeverDeadlock) {
  // A receiver whose window is 4x its sender's (it would credit only after
  // twice what the sender may send), and the other way round.
  ExpectNoDeadlock(16 << 10, 8, 64 << 10, 32);
  ExpectNoDeadlock(64 << 10, 32, 16 << 10, 8);
}

}  // namespace
}  // namespace shmgrpc::transport
