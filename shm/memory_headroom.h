// Memory headroom: how much more memory this process can commit before the
// kernel refuses it or kills the process.
//
// Why it exists: posix_fallocate of an arena inside a memory cgroup close to
// its limit does not fail with ENOSPC; the cgroup's OOM killer SIGKILLs the
// process (measured here: a client in a 60 MiB cgroup v1 was killed while
// reserving its 64 MiB arena). Arena::Create therefore asks first, so a
// session that would not fit is refused, and its calls go over plain gRPC,
// instead of killing the app or the server.
//
// Headroom is the least of
//  - for the process's memory cgroup and every ancestor that has a limit
//    (cgroup v1 memory controller or cgroup v2): limit - (usage - inactive
//    file cache), i.e. the kernel's reclaim-aware working set subtracted
//    from the limit;
//  - the system's MemAvailable (/proc/meminfo).
// It is a best-effort snapshot: it races with other allocations, and a limit
// that cannot be read counts as no limit.
//
// Thread-safe (it only reads files).
#ifndef SHMGRPC_SHM_MEMORY_HEADROOM_H_
#define SHMGRPC_SHM_MEMORY_HEADROOM_H_

#include <cstdint>
#include <limits>
#include <string>

#include "absl/status/status.h"

namespace shmgrpc::shm {

struct MemoryHeadroom {
  uint64_t bytes = std::numeric_limits<uint64_t>::max();  // max: no limit
  // What set it: a cgroup directory, "MemAvailable", or "" (no limit found).
  std::string limited_by;
};

// `root` prefixes every path read ("/proc/self/cgroup", "/proc/meminfo", the
// mount points in /proc/self/mountinfo); "" reads the real system. Tests pass
// a directory holding a made-up tree.
MemoryHeadroom FindMemoryHeadroom(const std::string& root = "");

// OK when `bytes` can be committed and `reserve` bytes of headroom remain;
// otherwise ResourceExhausted, naming the limit and the numbers.
absl::Status CheckMemoryHeadroom(uint64_t bytes, uint64_t reserve,
                                 const std::string& root = "");

}  // namespace shmgrpc::shm

#endif  // SHMGRPC_SHM_MEMORY_HEADROOM_H_
