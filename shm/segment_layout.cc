#include "shm/segment_layout.h"

#include <unistd.h>

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "shm/ring.h"

namespace shmgrpc::shm {
namespace {

size_t AlignUp(size_t n, size_t alignment) {
  return (n + alignment - 1) / alignment * alignment;
}

}  // namespace

absl::StatusOr<SegmentLayout> SegmentLayout::Compute(uint64_t data_bytes,
                                                     uint32_t ring_slots) {
  if (ring_slots < kMinRingSlots || ring_slots > kMaxRingSlots ||
      (ring_slots & (ring_slots - 1)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ring_slots must be a power of two in [", kMinRingSlots,
                     ", ", kMaxRingSlots, "], got ", ring_slots));
  }
  if (data_bytes == 0 || data_bytes > kMaxDataBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data area must be in (0, ", kMaxDataBytes, "] bytes, got ",
        data_bytes));
  }
  SegmentLayout layout;
  layout.ring_slots = ring_slots;
  const size_t ring_bytes = RingBytes(ring_slots);
  size_t cursor = AlignUp(sizeof(SegmentHeader), 4096);
  layout.data_ring_offset = cursor;
  cursor = AlignUp(cursor + ring_bytes, kCacheLine);
  layout.release_ring_offset = cursor;
  cursor = AlignUp(cursor + ring_bytes, kCacheLine);
  layout.data_consumer_offset = cursor;
  cursor = AlignUp(cursor + sizeof(RingConsumerState), kCacheLine);
  layout.release_consumer_offset = cursor;
  cursor = AlignUp(cursor + sizeof(RingConsumerState), kCacheLine);
  layout.data_offset = AlignUp(cursor, kDataPageBytes);
  layout.data_bytes = AlignUp(data_bytes, kDataPageBytes);
  layout.total_bytes = layout.data_offset + layout.data_bytes;
  return layout;
}

absl::StatusOr<std::unique_ptr<Arena>> CreateSegment(
    const std::string& debug_name, const SegmentLayout& layout) {
  absl::StatusOr<std::unique_ptr<Arena>> arena =
      Arena::Create(debug_name, layout.total_bytes);
  if (!arena.ok()) return arena.status();
  SegmentHeader header{};
  header.magic = kSegmentMagic;
  header.layout_version = kSegmentLayoutVersion;
  header.ring_slots = layout.ring_slots;
  header.total_bytes = layout.total_bytes;
  header.data_offset = layout.data_offset;
  header.data_bytes = layout.data_bytes;
  header.owner_pid = getpid();
  std::memcpy((*arena)->mutable_base(), &header, sizeof(header));
  return arena;
}

absl::StatusOr<std::unique_ptr<Arena>> MapPeerSegment(
    int fd, const SegmentLayout& layout) {
  absl::StatusOr<std::unique_ptr<Arena>> arena =
      Arena::MapPeer(fd, layout.total_bytes);
  if (!arena.ok()) return arena.status();
  SegmentHeader header;
  std::memcpy(&header, (*arena)->base(), sizeof(header));
  if (header.magic != kSegmentMagic ||
      header.layout_version != kSegmentLayoutVersion ||
      header.ring_slots != layout.ring_slots ||
      header.total_bytes != layout.total_bytes ||
      header.data_offset != layout.data_offset ||
      header.data_bytes != layout.data_bytes) {
    return absl::FailedPreconditionError(
        "peer segment header does not match the announced layout");
  }
  return arena;
}

}  // namespace shmgrpc::shm
