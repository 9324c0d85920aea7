#include "tests/peer_process.h"

#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "shm/uds.h"

namespace shmgrpc::testing {

absl::StatusOr<PeerProcess> ForkPeer(
    const std::function<int(int sock)>& body) {
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    return absl::InternalError(absl::StrCat("socketpair: ", strerror(errno)));
  }
  const pid_t pid = fork();
  if (pid < 0) {
    return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  }
  if (pid == 0) {
    close(fds[0]);
    const int code = body(fds[1]);
    _exit(code);
  }
  close(fds[1]);
  return PeerProcess{pid, fds[0]};
}

int WaitPeer(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

namespace {

struct SegmentAnnouncement {
  uint64_t data_bytes;
  uint32_t ring_slots;
  uint32_t reserved;
};

}  // namespace

absl::StatusOr<ExchangedSegments> ExchangeSegments(
    int sock, const EndpointConfig& config, const std::string& name) {
  ExchangedSegments segments;
  absl::StatusOr<shm::SegmentLayout> local_layout =
      shm::SegmentLayout::Compute(config.data_bytes, config.ring_slots);
  if (!local_layout.ok()) return local_layout.status();
  segments.local_layout = *local_layout;
  absl::StatusOr<std::unique_ptr<shm::Arena>> local =
      shm::CreateSegment(name, segments.local_layout);
  if (!local.ok()) return local.status();
  segments.local = std::move(*local);

  const SegmentAnnouncement mine{config.data_bytes, config.ring_slots, 0};
  if (absl::Status s =
          shm::SendWithFd(sock, &mine, sizeof(mine), segments.local->fd());
      !s.ok()) {
    return s;
  }
  SegmentAnnouncement theirs;
  int peer_fd = -1;
  if (absl::Status s = shm::RecvWithFd(sock, &theirs, sizeof(theirs), &peer_fd,
                                       absl::Seconds(10));
      !s.ok()) {
    return s;
  }
  absl::StatusOr<shm::SegmentLayout> peer_layout =
      shm::SegmentLayout::Compute(theirs.data_bytes, theirs.ring_slots);
  if (!peer_layout.ok()) {
    close(peer_fd);
    return peer_layout.status();
  }
  segments.peer_layout = *peer_layout;
  absl::StatusOr<std::unique_ptr<shm::Arena>> peer =
      shm::MapPeerSegment(peer_fd, segments.peer_layout);
  if (!peer.ok()) return peer.status();
  segments.peer = std::move(*peer);
  return segments;
}

absl::StatusOr<std::unique_ptr<shm::Endpoint>> ConnectEndpoint(
    int sock, const EndpointConfig& config, const std::string& name) {
  absl::StatusOr<ExchangedSegments> segments =
      ExchangeSegments(sock, config, name);
  if (!segments.ok()) return segments.status();
  return std::make_unique<shm::Endpoint>(
      std::move(segments->local), segments->local_layout,
      std::move(segments->peer), segments->peer_layout, sock, config.wait,
      config.inline_limits);
}

void FillPayload(uint8_t* data, size_t size, uint64_t seq) {
  uint64_t x = seq * 0x9e3779b97f4a7c15ull + 1;
  size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(data + i, &x, 8);
  }
  for (; i < size; ++i) data[i] = static_cast<uint8_t>(x >> (8 * (i % 8)));
}

uint64_t Checksum(const uint8_t* data, size_t size) {
  // Position-dependent (a reordered or shifted payload changes it), and fast
  // enough to read every byte of a 4 MiB payload in place.
  uint64_t a = 0x243f6a8885a308d3ull, b = 0;
  size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    uint64_t w;
    std::memcpy(&w, data + i, 8);
    a += w;
    b += a;
  }
  for (; i < size; ++i) {
    a += data[i];
    b += a;
  }
  return a ^ (b * 0x9e3779b97f4a7c15ull) ^ size;
}

}  // namespace shmgrpc::testing
