// Options for shm channels and servers, with their defaults.
#ifndef SHMGRPC_TRANSPORT_OPTIONS_H_
#define SHMGRPC_TRANSPORT_OPTIONS_H_

#include <cstddef>
#include <cstdint>

#include "absl/time/time.h"
#include "shm/wait_options.h"

namespace shmgrpc {

enum class PeerUidPolicy {
  kSameUid,  // only a peer process running as this process's uid (default)
  kAnyUid,   // anyone who can connect to the socket
};

struct Options {
  // Data area of the arena this side writes into, per session. Messages that
  // do not fit travel over plain gRPC (see README, fallback).
  size_t arena_bytes = 64 << 20;
  // Descriptors per ring (power of two).
  uint32_t ring_slots = 4096;
  // How this side waits for frames (notify with adaptive spin by default).
  shm::WaitOptions wait;
  // Largest message sent or received, as gRPC's default (4 MiB). Bigger is
  // RESOURCE_EXHAUSTED, as with a plain channel.
  size_t max_message_bytes = 4 << 20;
  // Whole handshake, either side.
  absl::Duration handshake_timeout = absl::Seconds(1);
  PeerUidPolicy peer_uid_policy = PeerUidPolicy::kSameUid;
};

}  // namespace shmgrpc

#endif  // SHMGRPC_TRANSPORT_OPTIONS_H_
