// Owner-side allocator: exhaustion is a clean status, freeing restores
// capacity, hostile frees are refused, and concurrent use balances to zero.
#include "shm/block_allocator.h"

#include <algorithm>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "shm/arena.h"

namespace shmgrpc::shm {
namespace {

constexpr size_t kPage = BlockAllocator::kPageBytes;

class BlockAllocatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto arena = Arena::Create("allocator_test", 16 * kPage);
    ASSERT_TRUE(arena.ok()) << arena.status();
    arena_ = std::move(*arena);
    allocator_ = std::make_unique<BlockAllocator>(arena_->mutable_base(),
                                                  arena_->size());
  }
  std::unique_ptr<Arena> arena_;
  std::unique_ptr<BlockAllocator> allocator_;
};

TEST_F(BlockAllocatorTest, BlocksAreDisjointAlignedAndTagged) {
  std::vector<Block> blocks;
  for (size_t size : {0, 1, 64, 96, 100, 500, 4000, 4096, 30000, 70000}) {
    auto block = allocator_->Allocate(size, /*stream_id=*/size + 1);
    ASSERT_TRUE(block.ok()) << block.status();
    EXPECT_GE(block->capacity, size);
    EXPECT_EQ(block->offset % 32, 0u);
    EXPECT_EQ(block->data, arena_->mutable_base() + block->offset);
    std::fill(block->data, block->data + size, 0xab);
    blocks.push_back(*block);
  }
  std::sort(blocks.begin(), blocks.end(),
            [](const Block& a, const Block& b) { return a.offset < b.offset; });
  for (size_t i = 1; i < blocks.size(); ++i) {
    EXPECT_GE(blocks[i].offset, blocks[i - 1].offset + blocks[i - 1].capacity);
  }
  std::set<uint64_t> streams;
  allocator_->ForEachLiveBlock(
      [&](const LiveBlockInfo& info) { streams.insert(info.stream_id); });
  EXPECT_EQ(streams.size(), blocks.size());
  EXPECT_TRUE(streams.count(70001));
  for (const Block& b : blocks) EXPECT_TRUE(allocator_->Free(b.offset).ok());
  EXPECT_EQ(allocator_->Stats().bytes_in_use, 0u);
  EXPECT_EQ(allocator_->Stats().blocks_in_use, 0u);
}

TEST_F(BlockAllocatorTest, ExhaustionIsCleanAndFreeingRestoresCapacity) {
  std::vector<Block> small;
  for (;;) {
    auto block = allocator_->Allocate(1024 - 32, 1);
    if (!block.ok()) {
      EXPECT_EQ(block.status().code(), absl::StatusCode::kResourceExhausted);
      break;
    }
    small.push_back(*block);
  }
  EXPECT_EQ(small.size(), 16 * kPage / 1024);
  ArenaStats stats = allocator_->Stats();
  EXPECT_EQ(stats.allocation_failures, 1u);
  EXPECT_EQ(stats.bytes_in_use, stats.capacity_bytes);
  EXPECT_EQ(stats.high_water_bytes, stats.capacity_bytes);
  // A large span cannot fit now...
  EXPECT_FALSE(allocator_->Allocate(8 * kPage, 1).ok());
  for (const Block& b : small) ASSERT_TRUE(allocator_->Free(b.offset).ok());
  // ...and after freeing, the whole data area is one span again, even though
  // the size class may have kept an empty page cached.
  auto whole = allocator_->Allocate(allocator_->max_payload_bytes(), 1);
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_TRUE(allocator_->Free(whole->offset).ok());
  stats = allocator_->Stats();
  EXPECT_EQ(stats.bytes_in_use, 0u);
  EXPECT_EQ(stats.allocation_failures, 2u);
}

TEST_F(BlockAllocatorTest, LargerThanArenaIsResourceExhausted) {
  auto block = allocator_->Allocate(17 * kPage, 1);
  ASSERT_FALSE(block.ok());
  EXPECT_EQ(block.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(BlockAllocatorTest, HostileFreesAreRefusedAndChangeNothing) {
  auto block = allocator_->Allocate(100, 1);
  ASSERT_TRUE(block.ok());
  auto large = allocator_->Allocate(100000, 1);
  ASSERT_TRUE(large.ok());
  const ArenaStats before = allocator_->Stats();
  for (uint64_t bad : {uint64_t{0}, block->offset + 32, block->offset + 1,
                       block->offset + 128, large->offset + kPage,
                       uint64_t{16 * kPage}, ~uint64_t{0}}) {
    absl::Status s = allocator_->Free(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(allocator_->Stats().bytes_in_use, before.bytes_in_use);
  EXPECT_TRUE(allocator_->Free(block->offset).ok());
  EXPECT_EQ(allocator_->Free(block->offset).code(),
            absl::StatusCode::kInvalidArgument);  // double free
  EXPECT_TRUE(allocator_->Free(large->offset).ok());
  EXPECT_EQ(allocator_->Stats().invalid_frees, 8u);
  EXPECT_EQ(allocator_->Stats().bytes_in_use, 0u);
}

TEST_F(BlockAllocatorTest, ReleaseAllFreesEverything) {
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(allocator_->Allocate(i * 300, 9).ok());
  }
  ASSERT_TRUE(allocator_->Allocate(3 * kPage, 9).ok());
  EXPECT_EQ(allocator_->ReleaseAll(), 21u);
  const ArenaStats stats = allocator_->Stats();
  EXPECT_EQ(stats.blocks_in_use, 0u);
  EXPECT_EQ(stats.bytes_in_use, 0u);
  EXPECT_EQ(stats.released_on_reset, 21u);
  int live = 0;
  allocator_->ForEachLiveBlock([&](const LiveBlockInfo&) { ++live; });
  EXPECT_EQ(live, 0);
  EXPECT_TRUE(allocator_->Allocate(allocator_->max_payload_bytes(), 1).ok());
}

TEST_F(BlockAllocatorTest, ConcurrentAllocFreeEndsWithZeroInUse) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 50000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([this, t] {
      std::mt19937 rng(t);
      std::vector<Block> held;
      for (int i = 0; i < kRounds; ++i) {
        const size_t size = (rng() % 8 == 0) ? 70000 + rng() % 100000
                                             : rng() % 5000;
        auto block = allocator_->Allocate(size, t);
        if (block.ok()) {
          block->data[0] = static_cast<uint8_t>(t);
          held.push_back(*block);
        }
        if (held.size() > 8 || (!block.ok() && !held.empty())) {
          const size_t victim = rng() % held.size();
          ASSERT_EQ(held[victim].data[0], static_cast<uint8_t>(t));
          ASSERT_TRUE(allocator_->Free(held[victim].offset).ok());
          held.erase(held.begin() + victim);
        }
      }
      for (const Block& b : held) ASSERT_TRUE(allocator_->Free(b.offset).ok());
    });
  }
  for (auto& th : threads) th.join();
  const ArenaStats stats = allocator_->Stats();
  EXPECT_EQ(stats.bytes_in_use, 0u);
  EXPECT_EQ(stats.blocks_in_use, 0u);
  EXPECT_EQ(stats.allocations, stats.frees);
  EXPECT_GT(stats.allocations, 0u);
  EXPECT_EQ(stats.invalid_frees, 0u);
}

}  // namespace
}  // namespace shmgrpc::shm
