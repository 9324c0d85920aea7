// Unix-domain socket primitives for the handshake: passing an fd with
// SCM_RIGHTS next to a small fixed-size message. (After the handshake the
// socket carries the SideChannel's tokens.)
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

}  // namespace shmgrpc::shm

#endif  // SHMGRPC_SHM_UDS_H_
