// Plain snapshot structs for the shm layer's counters. Snapshots are copies:
// reading one never blocks the hot path for long and never changes it.
#ifndef SHMGRPC_SHM_STATS_H_
#define SHMGRPC_SHM_STATS_H_

#include <cstdint>
#include <string>

namespace shmgrpc::shm {

// One arena's allocator.
struct ArenaStats {
  uint64_t capacity_bytes = 0;  // size of the data area
  uint64_t bytes_in_use = 0;    // whole blocks, headers included
  uint64_t blocks_in_use = 0;
  uint64_t high_water_bytes = 0;
  uint64_t allocations = 0;
  uint64_t frees = 0;
  uint64_t allocation_failures = 0;
  uint64_t invalid_frees = 0;      // releases naming no live block
  uint64_t released_on_reset = 0;  // blocks freed by ReleaseAll()
};

// One direction-pair endpoint: what it sent and received through its rings.
struct EndpointStats {
  uint64_t messages_sent = 0;
  uint64_t bytes_sent = 0;
  uint64_t messages_received = 0;
  uint64_t bytes_received = 0;
  uint64_t doorbells_sent = 0;
  uint64_t doorbells_suppressed = 0;  // consumer was awake: no syscall
  uint64_t wakeups = 0;               // times this side slept and woke
  uint64_t ring_full_waits = 0;       // sends that found the ring full
  uint64_t releases_sent = 0;
  uint64_t releases_received = 0;
  uint64_t invalid_descriptors = 0;  // rejected from the peer
  uint64_t inline_sent = 0;          // payloads sent on the socket
  uint64_t inline_bytes_sent = 0;
  uint64_t inline_received = 0;
  // Inline sends that waited for the peer to read queued records (or gave
  // up), and the most record bytes queued at once (InlineLimits).
  uint64_t inline_queue_waits = 0;
  uint64_t inline_queued_bytes_peak = 0;
  ArenaStats arena;
};

std::string ToString(const ArenaStats& stats);
std::string ToString(const EndpointStats& stats);

}  // namespace shmgrpc::shm

#endif  // SHMGRPC_SHM_STATS_H_
