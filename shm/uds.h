// Unix-domain socket primitives the shm layer needs: passing an fd with
// SCM_RIGHTS next to a small fixed-size message, and the 1-byte doorbell.
//
// All functions take a connected SOCK_STREAM unix socket. They never raise
// SIGPIPE (MSG_NOSIGNAL) and report a closed peer as Unavailable.
#ifndef SHMGRPC_SHM_UDS_H_
#define SHMGRPC_SHM_UDS_H_

#include <cstddef>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace shmgrpc::shm {

// Sends `len` bytes and, when `fd` >= 0, the fd as SCM_RIGHTS ancillary data.
absl::Status SendWithFd(int sock, const void* data, size_t len, int fd);

// Receives exactly `len` bytes, and at most one fd into `*fd` (-1 when none
// came), within `timeout`. Extra fds are closed and reported as an error.
// On error any received fd is closed and `*fd` is -1.
absl::Status RecvWithFd(int sock, void* data, size_t len, int* fd,
                        absl::Duration timeout);

// The doorbell: a wake-up byte on a connected socket.
class Doorbell {
 public:
  explicit Doorbell(int sock) : sock_(sock) {}

  // Sends one byte without blocking. A full socket buffer means the peer has
  // unread doorbells already, which is as good as ringing.
  absl::Status Ring();
  // Blocks until a doorbell arrives, the peer hangs up or `timeout` passes,
  // then drains pending doorbell bytes. OK on wake-up or timeout,
  // Unavailable when the peer is gone.
  absl::Status Wait(absl::Duration timeout);
  // Unavailable when the peer has closed its end; never blocks.
  absl::Status CheckPeer();

 private:
  int sock_;
};

}  // namespace shmgrpc::shm

#endif  // SHMGRPC_SHM_UDS_H_
