// Helpers for tests and benchmarks that run a real second process.
//
// ForkPeer() creates a connected unix socketpair, forks, and runs `body` in
// the child with its end of the socket; the child's exit code is body's
// return value. The parent keeps the other end. Fork before starting any
// thread in the parent.
//
// ConnectEndpoint() is the minimal symmetric segment exchange both sides run
// over that socket: create this side's sealed segment, send its parameters
// and fd (SCM_RIGHTS), receive and verify the peer's, build the Endpoint.
#ifndef SHMGRPC_TESTS_PEER_PROCESS_H_
#define SHMGRPC_TESTS_PEER_PROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "shm/endpoint.h"
#include "shm/segment_layout.h"
#include "shm/wait_options.h"

namespace shmgrpc::testing {

struct PeerProcess {
  pid_t pid = -1;
  int sock = -1;  // the parent's end
};

absl::StatusOr<PeerProcess> ForkPeer(const std::function<int(int sock)>& body);

// Waits for the child; returns its exit code, or 128 + signal.
int WaitPeer(pid_t pid);

struct EndpointConfig {
  uint64_t data_bytes = 64ull << 20;
  uint32_t ring_slots = 4096;
  shm::WaitOptions wait;
  shm::InlineLimits inline_limits;
};

// Both segments of a connection after the exchange, before an Endpoint
// takes them (tests that play a hostile peer use them raw).
struct ExchangedSegments {
  std::unique_ptr<shm::Arena> local;
  shm::SegmentLayout local_layout;
  std::unique_ptr<shm::Arena> peer;
  shm::SegmentLayout peer_layout;
};

absl::StatusOr<ExchangedSegments> ExchangeSegments(int sock,
                                                   const EndpointConfig& config,
                                                   const std::string& name);

absl::StatusOr<std::unique_ptr<shm::Endpoint>> ConnectEndpoint(
    int sock, const EndpointConfig& config, const std::string& name);

// Deterministic payload bytes for message `seq`, and a checksum to verify
// them in place.
void FillPayload(uint8_t* data, size_t size, uint64_t seq);
uint64_t Checksum(const uint8_t* data, size_t size);

}  // namespace shmgrpc::testing

#endif  // SHMGRPC_TESTS_PEER_PROCESS_H_
