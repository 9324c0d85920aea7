// The leak dump: walking a segment's block headers from the outside finds
// exactly the blocks the allocator says are live, and the shm_dump tool
// reports them for a live process.
#include "shm/segment_dump.h"

#include <unistd.h>

#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "shm/block_allocator.h"
#include "shm/segment_layout.h"
#include "tests/server_process.h"

namespace shmgrpc::shm {
namespace {

struct Segment {
  std::unique_ptr<Arena> arena;
  SegmentLayout layout;
  std::unique_ptr<BlockAllocator> allocator;
};

Segment MakeSegment(uint64_t data_bytes) {
  Segment s;
  s.layout = *SegmentLayout::Compute(data_bytes, 64);
  s.arena = *CreateSegment("shmgrpc-dump-test", s.layout);
  s.allocator = std::make_unique<BlockAllocator>(
      s.arena->mutable_base() + s.layout.data_offset, s.layout.data_bytes);
  return s;
}

std::map<uint64_t, LiveBlockInfo> AllocatorView(const BlockAllocator& a) {
  std::map<uint64_t, LiveBlockInfo> live;
  a.ForEachLiveBlock([&](const LiveBlockInfo& b) { live[b.offset] = b; });
  return live;
}

// Dumps `s` from the outside and checks it against the allocator's own view:
// the same blocks (offset, sizes, stream) and bytes. Returns how many of
// them span pages (large blocks, walked as runs).
int ExpectDumpMatchesAllocator(const Segment& s) {
  const std::map<uint64_t, LiveBlockInfo> expected =
      AllocatorView(*s.allocator);
  absl::StatusOr<SegmentDump> dump =
      DumpSegment(s.arena->base(), s.layout.total_bytes, ~0ull >> 1);
  EXPECT_TRUE(dump.ok()) << dump.status();
  if (!dump.ok()) return 0;
  EXPECT_EQ(dump->header.owner_pid, getpid());
  EXPECT_EQ(dump->live_blocks.size(), expected.size());
  int large = 0;
  for (const LiveBlockInfo& b : dump->live_blocks) {
    auto it = expected.find(b.offset);
    if (it == expected.end()) {
      ADD_FAILURE() << "dump invented block at " << b.offset;
      continue;
    }
    EXPECT_EQ(b.requested, it->second.requested);
    EXPECT_EQ(b.capacity, it->second.capacity);
    EXPECT_EQ(b.stream_id, it->second.stream_id);
    if (b.capacity >= kDataPageBytes - 32) ++large;
  }
  EXPECT_EQ(dump->live_bytes, s.allocator->Stats().bytes_in_use);
  return large;
}

TEST(SegmentDumpTest, FindsExactlyTheLiveBlocksAfterChurn) {
  Segment s = MakeSegment(4 << 20);
  std::mt19937 random(42);
  std::vector<Block> held;
  // Churn: mixed sizes (every size class and multi-page runs), random frees,
  // so pages change class and runs are split and reused. Dumped along the
  // way: once the arena has fragmented, large blocks rarely find a run, so
  // a dump at the end alone would walk small pages only.
  int large_seen = 0;
  for (int i = 0; i < 5000; ++i) {
    if (i % 250 == 0) {
      large_seen += ExpectDumpMatchesAllocator(s);
      if (::testing::Test::HasFailure()) return;
    }
    if (!held.empty() && random() % 3 == 0) {
      const size_t victim = random() % held.size();
      ASSERT_TRUE(s.allocator->Free(held[victim].offset).ok());
      held.erase(held.begin() + victim);
      continue;
    }
    const size_t size =
        random() % 10 == 0 ? random() % (300 << 10) : random() % (40 << 10);
    absl::StatusOr<Block> block = s.allocator->Allocate(size, 1000 + i);
    if (block.ok()) held.push_back(*block);
  }
  ASSERT_EQ(AllocatorView(*s.allocator).size(), held.size());
  large_seen += ExpectDumpMatchesAllocator(s);
  EXPECT_GT(large_seen, 0) << "no dump saw a multi-page block";

  s.allocator->ReleaseAll();
  absl::StatusOr<SegmentDump> dump =
      DumpSegment(s.arena->base(), s.layout.total_bytes, 0);
  ASSERT_TRUE(dump.ok());
  EXPECT_TRUE(dump->live_blocks.empty());
}

// Large blocks (page runs) among small ones, a freed run whose pages went to
// small blocks: the dump reports exactly the live ones with their sizes.
TEST(SegmentDumpTest, ReportsLargeBlocksAndFreedRunsReused) {
  Segment s = MakeSegment(2 << 20);
  absl::StatusOr<Block> small = s.allocator->Allocate(100, 1);
  absl::StatusOr<Block> large = s.allocator->Allocate(200 << 10, 2);
  absl::StatusOr<Block> freed = s.allocator->Allocate(3 * kDataPageBytes, 3);
  absl::StatusOr<Block> page_sized = s.allocator->Allocate(kDataPageBytes, 4);
  ASSERT_TRUE(small.ok() && large.ok() && freed.ok() && page_sized.ok());
  EXPECT_EQ(ExpectDumpMatchesAllocator(s), 3);
  ASSERT_TRUE(s.allocator->Free(freed->offset).ok());
  std::vector<Block> reused;  // small blocks, some in the freed run's pages
  for (int i = 0; i < 40; ++i) {
    absl::StatusOr<Block> block = s.allocator->Allocate(20 << 10, 100 + i);
    ASSERT_TRUE(block.ok()) << block.status();
    reused.push_back(*block);
  }
  EXPECT_EQ(ExpectDumpMatchesAllocator(s), 2);
  EXPECT_EQ(AllocatorView(*s.allocator).size(), 43u);
}

TEST(SegmentDumpTest, RejectsWhatIsNotASegment) {
  std::vector<uint8_t> junk(1 << 20, 0xab);
  EXPECT_FALSE(DumpSegment(junk.data(), junk.size(), 0).ok());
  Segment s = MakeSegment(1 << 20);
  EXPECT_FALSE(
      DumpSegment(s.arena->base(), s.layout.total_bytes - 4096, 0).ok())
      << "a size that contradicts the header";
}

TEST(ShmDumpToolTest, ReportsTheLiveBlocksOfARunningProcess) {
  Segment s = MakeSegment(1 << 20);
  for (int i = 0; i < 7; ++i) ASSERT_TRUE(s.allocator->Allocate(100, 77).ok());
  const std::string command =
      absl::StrCat(testing::RunfilePath("tools/shm_dump"), " --pid=", getpid());
  FILE* out = popen(command.c_str(), "r");
  ASSERT_NE(out, nullptr);
  std::string output;
  char buf[512];
  while (fgets(buf, sizeof(buf), out) != nullptr) output += buf;
  EXPECT_EQ(pclose(out), 0) << output;
  EXPECT_NE(output.find("own arena (owner pid " + std::to_string(getpid()) +
                        "), data 1048576 bytes, live blocks: 7"),
            std::string::npos)
      << output;
  EXPECT_NE(output.find("stream 77"), std::string::npos) << output;
  std::printf("%s", output.c_str());
}

}  // namespace
}  // namespace shmgrpc::shm
