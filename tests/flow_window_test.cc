// Flow-control windows on their own: limits, credit, close, the narrowing to
// the receiver's advertised window, a receiver catching a sender that ignores
// it, and the property the design relies on: a sender and a receiver that
// only ever exchange the credits the ReceiveWindow hands out never deadlock,
// whatever the sizes, also when the two sides' windows differ, and the
// receiver never refuses such a sender.
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
  SendWindow window({/*messages=*/4, /*bytes=*/1000});
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
  SendWindow bytes({/*messages=*/64, /*bytes=*/100});
  bytes.OnSent(150);
  EXPECT_FALSE(bytes.HasRoom());
  bytes.OnCredit({1, 1000});  // over-credit is clamped to what was sent
  EXPECT_TRUE(bytes.HasRoom());
  bytes.OnSent(99);
  EXPECT_TRUE(bytes.HasRoom()) << "99 of 100 bytes in flight";
}

TEST(FlowWindowTest, CloseFailsWaitersNowAndLater) {
  SendWindow window({/*messages=*/1, /*bytes=*/10});
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
  SendWindow send({/*messages=*/4, /*bytes=*/1 << 20});
  ReceiveWindow receive({/*messages=*/64, /*bytes=*/1 << 20});
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

TEST(FlowWindowTest, ASenderKeepsToTheSmallerOfTheTwoWindows) {
  const WindowLimits own = OwnWindowLimits(/*bytes=*/1 << 20, 64);
  EXPECT_EQ(own.messages, 64u);
  EXPECT_EQ(own.bytes, uint64_t{1} << 20);
  const WindowLimits narrowed =
      SenderLimits(own, EncodeWindowLimits({/*messages=*/8, /*bytes=*/4096}));
  EXPECT_EQ(narrowed.messages, 8u);
  EXPECT_EQ(narrowed.bytes, 4096u);
  const WindowLimits wider =
      SenderLimits(own, EncodeWindowLimits({1000, uint64_t{1} << 30}));
  EXPECT_EQ(wider.messages, 64u) << "a larger advertisement never widens";
  EXPECT_EQ(wider.bytes, uint64_t{1} << 20);
  EXPECT_EQ(SenderLimits(own, 0).messages, 64u) << "nothing advertised";
  EXPECT_EQ(SenderLimits(own, EncodeWindowLimits({0, 100})).messages, 64u);
  // A window never holds more messages than one credit can return, nor
  // nothing at all.
  EXPECT_EQ(OwnWindowLimits(1 << 20, 1u << 20).messages, kMaxWindowMessages);
  EXPECT_EQ(OwnWindowLimits(0, 0).messages, 1u);
  EXPECT_EQ(OwnWindowLimits(0, 0).bytes, 1u);
}

TEST(FlowWindowTest, ASenderIgnoringTheWindowIsCaughtAtOnce) {
  ReceiveWindow receive({/*messages=*/4, /*bytes=*/1000});
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(receive.OnArrived(10)) << i;
  EXPECT_FALSE(receive.OnArrived(10)) << "a 5th message in a window of 4";
  // Credit returned for two (the sender waits) makes room for two more.
  EXPECT_FALSE(receive.OnConsumed(10, /*sender_waits=*/false).has_value());
  ASSERT_TRUE(receive.OnConsumed(10, /*sender_waits=*/true).has_value());
  EXPECT_TRUE(receive.OnArrived(10));
  EXPECT_TRUE(receive.OnArrived(10));
  EXPECT_FALSE(receive.OnArrived(10));
  // Bytes: one message may cross the limit, the next may not come.
  ReceiveWindow bytes({/*messages=*/64, /*bytes=*/100});
  EXPECT_TRUE(bytes.OnArrived(99));
  EXPECT_TRUE(bytes.OnArrived(500)) << "99 of 100 bytes outstanding";
  EXPECT_FALSE(bytes.OnArrived(1));
}

// Messages up to 3x the byte window, a receiver that consumes at random
// moments: every message must get through, also when the two sides' windows
// differ (each side sizes its own, the sender keeps to the smaller), and
// the receiver never sees more outstanding than its window allows.
void ExpectNoDeadlock(uint64_t send_bytes, uint64_t send_messages,
                      uint64_t receive_bytes, uint64_t receive_messages) {
  constexpr int kMessages = 20000;
  const WindowLimits receive_limits{receive_messages, receive_bytes};
  SendWindow send(SenderLimits({send_messages, send_bytes},
                               EncodeWindowLimits(receive_limits)));
  ReceiveWindow receive(receive_limits);
  std::atomic<int> refused{0};
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
      if (!receive.OnArrived(size)) ++refused;  // it arrives as it is sent
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
  EXPECT_EQ(refused.load(), 0) << "an honest sender was refused";
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
