// Reading a segment from the outside, for leak dumps: the header and every
// live block, found by walking the data area's block headers.
//
// Works on any mapping of a segment (this process's own arena, a peer's, or
// one opened through /proc/PID/fd by a dump tool) and trusts nothing in it:
// a header that does not match is reported, and a block header that does not
// make sense ends the walk of its page. The walk relies on the allocator's
// invariants (block_allocator.h): every block starts with a BlockHeader, a
// page's first header names the page's current size class, freed blocks are
// marked free, and a live large block covers whole pages.
#ifndef SHMGRPC_SHM_SEGMENT_DUMP_H_
#define SHMGRPC_SHM_SEGMENT_DUMP_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "shm/block_allocator.h"
#include "shm/segment_layout.h"

namespace shmgrpc::shm {

struct SegmentDump {
  SegmentHeader header;
  std::vector<LiveBlockInfo> live_blocks;  // in offset order
  uint64_t live_bytes = 0;                 // whole blocks, headers included
};

// `base` maps `size` bytes of a segment. `now_ms` is CLOCK_MONOTONIC_COARSE
// in ms (as the allocator stamps blocks), for the blocks' ages.
absl::StatusOr<SegmentDump> DumpSegment(const uint8_t* base, size_t size,
                                        uint64_t now_ms);

}  // namespace shmgrpc::shm

#endif  // SHMGRPC_SHM_SEGMENT_DUMP_H_
