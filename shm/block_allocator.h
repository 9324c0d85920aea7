// BlockAllocator: hands out blocks of one arena's data area, for its owner.
//
// Contract:
//  - All allocation state lives in this process (never in shared memory), so
//    a crashing or hostile peer cannot corrupt it. Only the per-block
//    BlockHeader is written into the shared data area, for leak dumps.
//  - Thread-safe: Allocate/Free/ReleaseAll may be called from any thread.
//  - Small requests (header + payload <= 32 KiB) come from power-of-two size
//    classes (128 B ... 32 KiB) carved from 64 KiB pages: O(1) allocate and
//    free. Larger requests take a contiguous run of pages (best fit), up to
//    the whole data area. A page whose blocks are all free goes back to the
//    page pool, so freeing always restores capacity for large spans.
//  - Free() takes the payload offset a peer returned and verifies it names a
//    live block; anything else is InvalidArgument and changes nothing.
//  - Running out is ResourceExhausted and counted; it never blocks.
#ifndef SHMGRPC_SHM_BLOCK_ALLOCATOR_H_
#define SHMGRPC_SHM_BLOCK_ALLOCATOR_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "shm/stats.h"

namespace shmgrpc::shm {

// Written at the start of every block in shared memory; the payload follows.
struct BlockHeader {
  uint32_t magic;       // kLiveBlockMagic or kFreeBlockMagic
  uint16_t size_class;  // index, or kLargeSizeClass
  uint16_t reserved;
  uint32_t capacity;    // payload bytes usable
  uint32_t requested;   // payload bytes asked for
  uint64_t stream_id;   // owner's tag: which stream/call holds it
  uint64_t alloc_time_ms;  // CLOCK_MONOTONIC_COARSE at allocation
};
static_assert(sizeof(BlockHeader) == 32, "header keeps payloads 32-aligned");

inline constexpr uint32_t kLiveBlockMagic = 0x4b4c4231;  // "1BLK"
inline constexpr uint32_t kFreeBlockMagic = 0x45455246;  // "FREE"
inline constexpr uint16_t kLargeSizeClass = 0xffff;

// A block owned by this side; `data` is writable, `offset` is what travels in
// a descriptor (payload offset from the start of the data area).
struct Block {
  uint8_t* data = nullptr;
  uint64_t offset = 0;
  uint32_t capacity = 0;
};

// One live block, as reported by ForEachLiveBlock() for leak dumps.
struct LiveBlockInfo {
  uint64_t offset;
  uint32_t capacity;
  uint32_t requested;
  uint64_t stream_id;
  uint64_t age_ms;
};

class BlockAllocator {
 public:
  static constexpr size_t kPageBytes = 64 * 1024;
  static constexpr int kNumSizeClasses = 9;  // 128 B .. 32 KiB blocks
  static constexpr size_t kMaxSmallBlockBytes = 32 * 1024;

  // `data` is the writable data area (kPageBytes aligned and sized).
  BlockAllocator(uint8_t* data, size_t data_bytes);
  BlockAllocator(const BlockAllocator&) = delete;
  BlockAllocator& operator=(const BlockAllocator&) = delete;

  // A block with at least `payload_bytes` usable (0 is allowed).
  absl::StatusOr<Block> Allocate(size_t payload_bytes, uint64_t stream_id);
  // Frees the block whose payload starts at `payload_offset`.
  absl::Status Free(uint64_t payload_offset);
  // Frees every live block (the peer that held them is gone). Returns how
  // many blocks were live.
  uint64_t ReleaseAll();

  // Largest payload a single block can carry.
  size_t max_payload_bytes() const;
  ArenaStats Stats() const;
  void ForEachLiveBlock(const std::function<void(const LiveBlockInfo&)>& fn)
      const;

 private:
  static constexpr uint32_t kNone = ~0u;
  enum PageKind : int8_t { kFreePage = -1, kLargeHead = -2, kLargeBody = -3 };

  struct PageMeta {
    int8_t kind = kFreePage;  // PageKind, or the size class using the page
    uint16_t free_blocks = 0;
    uint32_t run_pages = 0;   // for kLargeHead
    uint32_t prev = kNone;    // links in the class's partial-page list
    uint32_t next = kNone;
    uint64_t used[8] = {};    // one bit per block (<= 512 blocks a page)
  };

  static int SizeClassFor(size_t block_bytes);
  static size_t ClassBlockBytes(int size_class) { return size_t{128} << size_class; }

  // Page-run pool (caller holds mu_).
  uint32_t TakeRun(uint32_t pages);  // kNone when nothing fits
  void ReclaimEmptyPages();           // returns cached empty class pages
  void GiveRun(uint32_t first, uint32_t pages);
  void UnlinkPartial(int size_class, uint32_t page);
  void PushPartial(int size_class, uint32_t page);
  BlockHeader* HeaderAt(uint64_t block_offset) const {
    return reinterpret_cast<BlockHeader*>(data_ + block_offset);
  }
  void WriteHeader(uint64_t block_offset, uint16_t size_class,
                   uint32_t capacity, uint32_t requested, uint64_t stream_id);
  void AccountFree(size_t block_bytes);

  uint8_t* const data_;
  const size_t data_bytes_;
  const uint32_t num_pages_;

  mutable std::mutex mu_;
  std::vector<PageMeta> pages_;
  uint32_t partial_head_[kNumSizeClasses];
  std::map<uint32_t, uint32_t> free_runs_;          // first page -> pages
  std::set<std::pair<uint32_t, uint32_t>> by_size_;  // (pages, first page)
  ArenaStats stats_;
};

}  // namespace shmgrpc::shm

#endif  // SHMGRPC_SHM_BLOCK_ALLOCATOR_H_
