// Arena: one memfd-backed shared-memory region, as seen by its owner or a peer.
//
// Contract:
//  - Arena::Create() first checks the memory headroom (memory_headroom.h):
//    a size that would leave less than kArenaMemoryReserve of it is
//    ResourceExhausted, because fallocate in a memory cgroup at its limit
//    gets the process OOM-killed instead of failing.
//  - It then makes a memfd (MFD_CLOEXEC | MFD_ALLOW_SEALING), sizes it
//    with ftruncate, reserves every page with posix_fallocate (so a full tmpfs
//    or memory cgroup is an error here, never a SIGBUS later), maps it
//    read-write, then seals it F_SEAL_SHRINK | F_SEAL_GROW |
//    F_SEAL_FUTURE_WRITE | F_SEAL_SEAL. After that only the owner's existing
//    mapping can write: a peer holding the fd can map it read-only and nothing
//    else (no write mapping, no resize).
//  - Arena::MapPeer() takes a received fd, refuses it unless it carries all of
//    those seals and has exactly the expected size, and maps it read-only.
//  - Mappings are not pre-faulted: a page's first touch in each process is a
//    minor fault (its memory is already reserved). MAP_POPULATE on both
//    mappings cost ~40 ms per 64 MiB arena pair, most of a ~100 ms
//    handshake, to save faults that a warm channel never takes again.
//  - The arena owns its fd and mapping; both are released in the destructor.
//
// Thread-safe after construction (it is immutable).
#ifndef SHMGRPC_SHM_ARENA_H_
#define SHMGRPC_SHM_ARENA_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace shmgrpc::shm {

// The seals every arena carries; a peer fd without all of them is refused.
int RequiredSeals();

// Headroom Arena::Create leaves for the rest of the process.
inline constexpr uint64_t kArenaMemoryReserve = uint64_t{16} << 20;

class Arena {
 public:
  // Creates and seals a new owner arena of `size_bytes` (rounded up to a page).
  // `debug_name` shows in /proc/<pid>/fd and helps find leaks.
  static absl::StatusOr<std::unique_ptr<Arena>> Create(
      const std::string& debug_name, size_t size_bytes);

  // Verifies and maps a peer's arena read-only. Takes ownership of `fd` in all
  // cases (it is closed on error).
  static absl::StatusOr<std::unique_ptr<Arena>> MapPeer(int fd,
                                                        size_t expected_bytes);

  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena();

  // Writable base; nullptr for a peer (read-only) arena.
  uint8_t* mutable_base() const { return writable_ ? base_ : nullptr; }
  const uint8_t* base() const { return base_; }
  size_t size() const { return size_; }
  int fd() const { return fd_; }
  bool writable() const { return writable_; }

 private:
  Arena(int fd, uint8_t* base, size_t size, bool writable)
      : fd_(fd), base_(base), size_(size), writable_(writable) {}

  int fd_;
  uint8_t* base_;
  size_t size_;
  bool writable_;
};

}  // namespace shmgrpc::shm

#endif  // SHMGRPC_SHM_ARENA_H_
