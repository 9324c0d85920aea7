#include "shm/segment_dump.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace shmgrpc::shm {
namespace {

constexpr size_t kBlockHeaderBytes = sizeof(BlockHeader);

BlockHeader ReadHeader(const uint8_t* at) {
  BlockHeader header;
  std::memcpy(&header, at, sizeof(header));  // copied once: may be changing
  return header;
}

}  // namespace

absl::StatusOr<SegmentDump> DumpSegment(const uint8_t* base, size_t size,
                                        uint64_t now_ms) {
  SegmentDump dump;
  if (size < sizeof(SegmentHeader)) {
    return absl::InvalidArgumentError("smaller than a segment header");
  }
  std::memcpy(&dump.header, base, sizeof(SegmentHeader));
  const SegmentHeader& h = dump.header;
  if (h.magic != kSegmentMagic || h.layout_version != kSegmentLayoutVersion) {
    return absl::InvalidArgumentError("not a shmgrpc segment (bad magic)");
  }
  if (h.total_bytes != size || h.data_offset > size ||
      h.data_bytes > size - h.data_offset ||
      h.data_bytes % kDataPageBytes != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "segment header does not match its size: total ", h.total_bytes,
        ", data ", h.data_offset, "+", h.data_bytes, ", mapped ", size));
  }
  const uint8_t* data = base + h.data_offset;
  const uint64_t pages = h.data_bytes / kDataPageBytes;
  auto report = [&](uint64_t block_offset, const BlockHeader& header,
                    uint64_t block_bytes) {
    dump.live_blocks.push_back(LiveBlockInfo{
        block_offset + kBlockHeaderBytes, header.capacity, header.requested,
        header.stream_id,
        now_ms - std::min(now_ms, header.alloc_time_ms)});
    dump.live_bytes += block_bytes;
  };
  for (uint64_t page = 0; page < pages;) {
    const uint64_t page_offset = page * kDataPageBytes;
    const BlockHeader first = ReadHeader(data + page_offset);
    const bool live = first.magic == kLiveBlockMagic;
    if (!live && first.magic != kFreeBlockMagic) {
      ++page;  // never used
      continue;
    }
    if (first.size_class == kLargeSizeClass) {
      const uint64_t run_pages =
          (uint64_t{first.capacity} + kBlockHeaderBytes + kDataPageBytes - 1) /
          kDataPageBytes;
      if (!live || run_pages == 0 || run_pages > pages - page) {
        ++page;  // a freed run's pages may have been reused one by one
        continue;
      }
      report(page_offset, first, run_pages * kDataPageBytes);
      page += run_pages;
      continue;
    }
    if (first.size_class >= BlockAllocator::kNumSizeClasses) {
      ++page;
      continue;
    }
    const uint64_t block_bytes = uint64_t{128} << first.size_class;
    for (uint64_t offset = 0; offset + block_bytes <= kDataPageBytes;
         offset += block_bytes) {
      const BlockHeader header = ReadHeader(data + page_offset + offset);
      if (header.magic == kLiveBlockMagic &&
          header.size_class == first.size_class) {
        report(page_offset + offset, header, block_bytes);
      }
    }
    ++page;
  }
  return dump;
}

}  // namespace shmgrpc::shm
