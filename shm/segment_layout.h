// SegmentLayout: where things live inside one side's arena.
//
// Each side of a connection owns one arena and writes only into it:
//
//   [header page] [data ring: tail + slots] [release ring: tail + slots]
//   [consumer state for the peer's data ring: head, wake state]
//   [consumer state for the peer's release ring: head]
//   [data area, 64 KiB aligned: blocks handed out by BlockAllocator]
//
// The layout is a pure function of (data_bytes, ring_slots), so a receiver
// recomputes it from the negotiated parameters instead of trusting offsets
// stored in the peer's memory; the header is only checked against it.
#ifndef SHMGRPC_SHM_SEGMENT_LAYOUT_H_
#define SHMGRPC_SHM_SEGMENT_LAYOUT_H_

#include <cstddef>
#include <cstdint>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "shm/arena.h"

namespace shmgrpc::shm {

inline constexpr size_t kCacheLine = 64;
// Granularity of the data area and of the allocator's large spans.
inline constexpr size_t kDataPageBytes = 64 * 1024;
inline constexpr uint64_t kSegmentMagic = 0x314d4853'43505247ull;  // "GRPCSHM1"
inline constexpr uint32_t kSegmentLayoutVersion = 1;

// Written once by the owner at offset 0; read by dump tools and checked by the
// peer against the layout it computed itself.
struct SegmentHeader {
  uint64_t magic;
  uint32_t layout_version;
  uint32_t ring_slots;
  uint64_t total_bytes;
  uint64_t data_offset;
  uint64_t data_bytes;
  int32_t owner_pid;
  uint32_t reserved;
};

struct SegmentLayout {
  // Limits a receiver enforces before mapping anything a peer announced.
  static constexpr uint32_t kMinRingSlots = 2;
  static constexpr uint32_t kMaxRingSlots = 1u << 20;
  static constexpr uint64_t kMaxDataBytes = 64ull << 30;

  // `ring_slots` must be a power of two; `data_bytes` is rounded up to a
  // multiple of kDataPageBytes.
  static absl::StatusOr<SegmentLayout> Compute(uint64_t data_bytes,
                                               uint32_t ring_slots);

  uint32_t ring_slots = 0;
  size_t data_ring_offset = 0;     // RingProducerState + slots
  size_t release_ring_offset = 0;  // RingProducerState + slots
  size_t data_consumer_offset = 0;     // RingConsumerState
  size_t release_consumer_offset = 0;  // RingConsumerState
  size_t data_offset = 0;
  size_t data_bytes = 0;
  size_t total_bytes = 0;
};

// Creates this side's arena for `layout` and writes its header.
absl::StatusOr<std::unique_ptr<Arena>> CreateSegment(
    const std::string& debug_name, const SegmentLayout& layout);

// Maps a peer's segment fd (taking ownership) read-only, after checking its
// seals, its size and its header against `layout`.
absl::StatusOr<std::unique_ptr<Arena>> MapPeerSegment(
    int fd, const SegmentLayout& layout);

}  // namespace shmgrpc::shm

#endif  // SHMGRPC_SHM_SEGMENT_LAYOUT_H_
