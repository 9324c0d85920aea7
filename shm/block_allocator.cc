#include "shm/block_allocator.h"

#include <time.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace shmgrpc::shm {
namespace {

uint64_t CoarseNowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

constexpr uint64_t kHeaderBytes = sizeof(BlockHeader);

}  // namespace

BlockAllocator::BlockAllocator(uint8_t* data, size_t data_bytes)
    : data_(data),
      data_bytes_(data_bytes),
      num_pages_(static_cast<uint32_t>(data_bytes / kPageBytes)),
      pages_(num_pages_) {
  std::fill(std::begin(partial_head_), std::end(partial_head_), kNone);
  if (num_pages_ > 0) GiveRun(0, num_pages_);
  stats_.capacity_bytes = uint64_t{num_pages_} * kPageBytes;
}

int BlockAllocator::SizeClassFor(size_t block_bytes) {
  if (block_bytes <= 128) return 0;
  const int ceil_log2 = 64 - __builtin_clzll(block_bytes - 1);
  return ceil_log2 - 7;
}

size_t BlockAllocator::max_payload_bytes() const {
  return num_pages_ == 0 ? 0 : size_t{num_pages_} * kPageBytes - kHeaderBytes;
}

void BlockAllocator::ReclaimEmptyPages() {
  for (int cls = 0; cls < kNumSizeClasses; ++cls) {
    const uint32_t page = partial_head_[cls];
    if (page == kNone) continue;
    const uint32_t blocks_per_page =
        static_cast<uint32_t>(kPageBytes / ClassBlockBytes(cls));
    if (pages_[page].free_blocks == blocks_per_page) {
      UnlinkPartial(cls, page);
      GiveRun(page, 1);
    }
  }
}

uint32_t BlockAllocator::TakeRun(uint32_t pages) {
  auto it = by_size_.lower_bound({pages, 0});
  if (it == by_size_.end()) {
    ReclaimEmptyPages();
    it = by_size_.lower_bound({pages, 0});
  }
  if (it == by_size_.end()) return kNone;
  const auto [run_pages, first] = *it;
  by_size_.erase(it);
  free_runs_.erase(first);
  if (run_pages > pages) {
    free_runs_[first + pages] = run_pages - pages;
    by_size_.insert({run_pages - pages, first + pages});
  }
  return first;
}

void BlockAllocator::GiveRun(uint32_t first, uint32_t pages) {
  for (uint32_t p = first; p < first + pages; ++p) {
    pages_[p] = PageMeta();
  }
  // Merge with the free runs on either side.
  auto next = free_runs_.lower_bound(first);
  if (next != free_runs_.end() && next->first == first + pages) {
    pages += next->second;
    by_size_.erase({next->second, next->first});
    next = free_runs_.erase(next);
  }
  if (next != free_runs_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == first) {
      by_size_.erase({prev->second, prev->first});
      first = prev->first;
      pages += prev->second;
      free_runs_.erase(prev);
    }
  }
  free_runs_[first] = pages;
  by_size_.insert({pages, first});
}

void BlockAllocator::PushPartial(int size_class, uint32_t page) {
  PageMeta& meta = pages_[page];
  meta.prev = kNone;
  meta.next = partial_head_[size_class];
  if (meta.next != kNone) pages_[meta.next].prev = page;
  partial_head_[size_class] = page;
}

void BlockAllocator::UnlinkPartial(int size_class, uint32_t page) {
  PageMeta& meta = pages_[page];
  if (meta.prev != kNone) {
    pages_[meta.prev].next = meta.next;
  } else {
    partial_head_[size_class] = meta.next;
  }
  if (meta.next != kNone) pages_[meta.next].prev = meta.prev;
  meta.prev = meta.next = kNone;
}

void BlockAllocator::WriteHeader(uint64_t block_offset, uint16_t size_class,
                                 uint32_t capacity, uint32_t requested,
                                 uint64_t stream_id) {
  BlockHeader* header = HeaderAt(block_offset);
  header->magic = kLiveBlockMagic;
  header->size_class = size_class;
  header->reserved = 0;
  header->capacity = capacity;
  header->requested = requested;
  header->stream_id = stream_id;
  header->alloc_time_ms = CoarseNowMs();
}

absl::StatusOr<Block> BlockAllocator::Allocate(size_t payload_bytes,
                                               uint64_t stream_id) {
  const size_t block_bytes = payload_bytes + kHeaderBytes;
  uint64_t block_offset;
  uint16_t size_class;
  size_t granted_bytes;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (payload_bytes > max_payload_bytes()) {
      ++stats_.allocation_failures;
      return absl::ResourceExhaustedError(
          absl::StrCat("block of ", payload_bytes,
                       " bytes is larger than the arena's data area"));
    }
    if (block_bytes <= kMaxSmallBlockBytes) {
      const int cls = SizeClassFor(block_bytes);
      granted_bytes = ClassBlockBytes(cls);
      const uint32_t blocks_per_page =
          static_cast<uint32_t>(kPageBytes / granted_bytes);
      uint32_t page = partial_head_[cls];
      if (page == kNone) {
        page = TakeRun(1);
        if (page == kNone) {
          ++stats_.allocation_failures;
          return absl::ResourceExhaustedError(absl::StrCat(
              "shared memory exhausted: no free page for a ", granted_bytes,
              "-byte block (", stats_.bytes_in_use, " of ",
              stats_.capacity_bytes, " bytes in use)"));
        }
        PageMeta& fresh = pages_[page];
        fresh.kind = static_cast<int8_t>(cls);
        fresh.free_blocks = static_cast<uint16_t>(blocks_per_page);
        // Bits past the last block read as used so the scan never picks them.
        for (uint32_t i = blocks_per_page; i < 512; ++i) {
          fresh.used[i / 64] |= uint64_t{1} << (i % 64);
        }
        PushPartial(cls, page);
      }
      PageMeta& meta = pages_[page];
      uint32_t index = 0;
      for (int w = 0; w < 8; ++w) {
        if (meta.used[w] != ~uint64_t{0}) {
          index = w * 64 + __builtin_ctzll(~meta.used[w]);
          break;
        }
      }
      meta.used[index / 64] |= uint64_t{1} << (index % 64);
      if (--meta.free_blocks == 0) UnlinkPartial(cls, page);
      block_offset = uint64_t{page} * kPageBytes + uint64_t{index} * granted_bytes;
      size_class = static_cast<uint16_t>(cls);
    } else {
      const uint32_t run =
          static_cast<uint32_t>((block_bytes + kPageBytes - 1) / kPageBytes);
      const uint32_t first = TakeRun(run);
      if (first == kNone) {
        ++stats_.allocation_failures;
        return absl::ResourceExhaustedError(absl::StrCat(
            "shared memory exhausted: no contiguous ", run,
            "-page span for ", payload_bytes, " bytes (", stats_.bytes_in_use,
            " of ", stats_.capacity_bytes, " bytes in use)"));
      }
      pages_[first].kind = kLargeHead;
      pages_[first].run_pages = run;
      for (uint32_t p = first + 1; p < first + run; ++p) {
        pages_[p].kind = kLargeBody;
      }
      granted_bytes = size_t{run} * kPageBytes;
      block_offset = uint64_t{first} * kPageBytes;
      size_class = kLargeSizeClass;
    }
    ++stats_.allocations;
    ++stats_.blocks_in_use;
    stats_.bytes_in_use += granted_bytes;
    stats_.high_water_bytes =
        std::max(stats_.high_water_bytes, stats_.bytes_in_use);
  }
  const uint32_t capacity = static_cast<uint32_t>(
      std::min<size_t>(granted_bytes - kHeaderBytes, UINT32_MAX));
  WriteHeader(block_offset, size_class, capacity,
              static_cast<uint32_t>(payload_bytes), stream_id);
  return Block{data_ + block_offset + kHeaderBytes,
               block_offset + kHeaderBytes, capacity};
}

void BlockAllocator::AccountFree(size_t block_bytes) {
  ++stats_.frees;
  --stats_.blocks_in_use;
  stats_.bytes_in_use -= block_bytes;
}

absl::Status BlockAllocator::Free(uint64_t payload_offset) {
  std::lock_guard<std::mutex> lock(mu_);
  auto invalid = [&](absl::string_view why) {
    ++stats_.invalid_frees;
    return absl::InvalidArgumentError(
        absl::StrCat("free of offset ", payload_offset, ": ", why));
  };
  if (payload_offset < kHeaderBytes ||
      payload_offset >= uint64_t{num_pages_} * kPageBytes) {
    return invalid("outside the data area");
  }
  const uint64_t block_offset = payload_offset - kHeaderBytes;
  const uint32_t page = static_cast<uint32_t>(block_offset / kPageBytes);
  PageMeta& meta = pages_[page];
  if (meta.kind >= 0) {
    const int cls = meta.kind;
    const size_t block_bytes = ClassBlockBytes(cls);
    const uint64_t in_page = block_offset % kPageBytes;
    if (in_page % block_bytes != 0) return invalid("not a block boundary");
    const uint32_t index = static_cast<uint32_t>(in_page / block_bytes);
    const uint64_t bit = uint64_t{1} << (index % 64);
    if ((meta.used[index / 64] & bit) == 0) return invalid("block not live");
    meta.used[index / 64] &= ~bit;
    HeaderAt(block_offset)->magic = kFreeBlockMagic;
    AccountFree(block_bytes);
    const uint32_t blocks_per_page =
        static_cast<uint32_t>(kPageBytes / block_bytes);
    if (++meta.free_blocks == 1) PushPartial(cls, page);
    // An empty page goes back to the pool unless it is the class's only
    // partial page: keeping that one makes alloc/free ping-pong O(1) instead
    // of a pool round trip. ReclaimEmptyPages() takes it back under pressure.
    if (meta.free_blocks == blocks_per_page &&
        !(partial_head_[cls] == page && meta.next == kNone)) {
      UnlinkPartial(cls, page);
      GiveRun(page, 1);
    }
    return absl::OkStatus();
  }
  if (meta.kind == kLargeHead && block_offset % kPageBytes == 0) {
    const uint32_t run = meta.run_pages;
    HeaderAt(block_offset)->magic = kFreeBlockMagic;
    AccountFree(size_t{run} * kPageBytes);
    GiveRun(page, run);
    return absl::OkStatus();
  }
  return invalid("block not live");
}

uint64_t BlockAllocator::ReleaseAll() {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t released = 0;
  for (uint32_t page = 0; page < num_pages_; ++page) {
    const PageMeta& meta = pages_[page];
    if (meta.kind == kLargeHead) {
      HeaderAt(uint64_t{page} * kPageBytes)->magic = kFreeBlockMagic;
      ++released;
    } else if (meta.kind >= 0) {
      const size_t block_bytes = ClassBlockBytes(meta.kind);
      const uint32_t blocks = static_cast<uint32_t>(kPageBytes / block_bytes);
      for (uint32_t i = 0; i < blocks; ++i) {
        if (meta.used[i / 64] & (uint64_t{1} << (i % 64))) {
          HeaderAt(uint64_t{page} * kPageBytes + i * block_bytes)->magic =
              kFreeBlockMagic;
          ++released;
        }
      }
    }
  }
  free_runs_.clear();
  by_size_.clear();
  std::fill(std::begin(partial_head_), std::end(partial_head_), kNone);
  if (num_pages_ > 0) GiveRun(0, num_pages_);
  stats_.frees += released;
  stats_.released_on_reset += released;
  stats_.blocks_in_use = 0;
  stats_.bytes_in_use = 0;
  return released;
}

ArenaStats BlockAllocator::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void BlockAllocator::ForEachLiveBlock(
    const std::function<void(const LiveBlockInfo&)>& fn) const {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t now_ms = CoarseNowMs();
  auto report = [&](uint64_t block_offset) {
    const BlockHeader* header = HeaderAt(block_offset);
    fn(LiveBlockInfo{block_offset + kHeaderBytes, header->capacity,
                     header->requested, header->stream_id,
                     now_ms - std::min(now_ms, header->alloc_time_ms)});
  };
  for (uint32_t page = 0; page < num_pages_; ++page) {
    const PageMeta& meta = pages_[page];
    if (meta.kind == kLargeHead) {
      report(uint64_t{page} * kPageBytes);
    } else if (meta.kind >= 0) {
      const size_t block_bytes = ClassBlockBytes(meta.kind);
      const uint32_t blocks = static_cast<uint32_t>(kPageBytes / block_bytes);
      for (uint32_t i = 0; i < blocks; ++i) {
        if (meta.used[i / 64] & (uint64_t{1} << (i % 64))) {
          report(uint64_t{page} * kPageBytes + i * block_bytes);
        }
      }
    }
  }
}

}  // namespace shmgrpc::shm
