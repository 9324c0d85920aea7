#include "shm/stats.h"

#include "absl/strings/str_format.h"

namespace shmgrpc::shm {

std::string ToString(const ArenaStats& s) {
  return absl::StrFormat(
      "arena{capacity=%u in_use=%u blocks=%u high_water=%u allocs=%u "
      "frees=%u failures=%u invalid_frees=%u released_on_reset=%u}",
      s.capacity_bytes, s.bytes_in_use, s.blocks_in_use, s.high_water_bytes,
      s.allocations, s.frees, s.allocation_failures, s.invalid_frees,
      s.released_on_reset);
}

std::string ToString(const EndpointStats& s) {
  return absl::StrFormat(
      "endpoint{sent=%u/%uB received=%u/%uB doorbells=%u suppressed=%u "
      "wakeups=%u ring_full_waits=%u releases_sent=%u releases_received=%u "
      "invalid_descriptors=%u inline_sent=%u/%uB inline_received=%u "
      "inline_queue_waits=%u inline_queued_peak=%uB %s}",
      s.messages_sent, s.bytes_sent, s.messages_received, s.bytes_received,
      s.doorbells_sent, s.doorbells_suppressed, s.wakeups, s.ring_full_waits,
      s.releases_sent, s.releases_received, s.invalid_descriptors,
      s.inline_sent, s.inline_bytes_sent, s.inline_received,
      s.inline_queue_waits, s.inline_queued_bytes_peak, ToString(s.arena));
}

}  // namespace shmgrpc::shm
