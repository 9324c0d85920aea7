// StreamSlots: the count is exact at the limit, slots come back when
// released, moved or destroyed (once each), and an abandoned one never does.
#include "transport/stream_slots.h"

#include <atomic>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace shmgrpc::transport {
namespace {

TEST(StreamSlotsTest, OpensUpToTheLimit) {
  StreamSlots slots(2);
  StreamSlot a = slots.TryOpen();
  StreamSlot b = slots.TryOpen();
  StreamSlot c = slots.TryOpen();
  EXPECT_TRUE(a.held());
  EXPECT_TRUE(b.held());
  EXPECT_FALSE(c.held());
  EXPECT_EQ(slots.open(), 2u);
  a.Release();
  EXPECT_FALSE(a.held());
  EXPECT_EQ(slots.open(), 1u);
  a.Release();  // once only
  EXPECT_EQ(slots.open(), 1u);
  EXPECT_TRUE(slots.TryOpen().held());  // and back at once (a temporary)
  EXPECT_EQ(slots.open(), 1u);
}

TEST(StreamSlotsTest, ZeroMeansNoLimit) {
  StreamSlots slots(0);
  std::vector<StreamSlot> held;
  for (int i = 0; i < 10000; ++i) held.push_back(slots.TryOpen());
  EXPECT_TRUE(held.back().held());
  EXPECT_EQ(slots.open(), 10000u);
  held.clear();
  EXPECT_EQ(slots.open(), 0u);
}

TEST(StreamSlotsTest, MovesCarryTheSlotAndAbandonKeepsItCounted) {
  StreamSlots slots(3);
  StreamSlot a = slots.TryOpen();
  StreamSlot moved(std::move(a));
  EXPECT_FALSE(a.held());  // NOLINT(bugprone-use-after-move): the contract
  EXPECT_TRUE(moved.held());
  EXPECT_EQ(slots.open(), 1u);
  StreamSlot b = slots.TryOpen();
  b = std::move(moved);  // b's own slot comes back
  EXPECT_EQ(slots.open(), 1u);
  b.Abandon();
  EXPECT_FALSE(b.held());
  EXPECT_EQ(slots.open(), 1u) << "an abandoned slot stays counted";
}

// A client call's slot may outlive its session's count (a retry moves the
// call to the next session after the last one is gone): releasing it then
// is safe. (It was a use-after-free, caught by ASan in the retry tests.)
TEST(StreamSlotsTest, ASlotMayOutliveItsSlots) {
  StreamSlot slot;
  {
    StreamSlots slots(1);
    slot = slots.TryOpen();
    ASSERT_TRUE(slot.held());
  }
  slot.Release();
  EXPECT_FALSE(slot.held());
}

// Threads racing at the limit never hold more than it together, and a
// failed attempt never makes another fail while a slot is free: with 4
// threads and a limit of 4, every attempt succeeds.
TEST(StreamSlotsTest, ExactUnderConcurrency) {
  constexpr int kThreads = 4;
  StreamSlots slots(kThreads);
  std::atomic<int> failures{0};
  std::atomic<uint64_t> most_open{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 100000; ++i) {
        StreamSlot slot = slots.TryOpen();
        if (!slot.held()) failures.fetch_add(1);
        const uint64_t open = slots.open();
        uint64_t seen = most_open.load();
        while (open > seen && !most_open.compare_exchange_weak(seen, open)) {
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_LE(most_open.load(), static_cast<uint64_t>(kThreads));
  EXPECT_EQ(slots.open(), 0u);
}

TEST(StreamSlotsTest, AtTheLimitOthersAreRefusedUntilOneReturns) {
  constexpr int kLimit = 3;
  StreamSlots slots(kLimit);
  std::vector<StreamSlot> held;
  for (int i = 0; i < kLimit; ++i) held.push_back(slots.TryOpen());
  std::atomic<int> got{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        if (slots.TryOpen().held()) got.fetch_add(1);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(got.load(), 0);
  EXPECT_EQ(slots.open(), static_cast<uint64_t>(kLimit));
}

}  // namespace
}  // namespace shmgrpc::transport
