#include "transport/handshake.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "shm/arena.h"
#include "shm/deadline.h"
#include "shm/memory_headroom.h"
#include "shm/segment_layout.h"
#include "shm/uds.h"
#include "transport/flow_window.h"

namespace shmgrpc::transport {
namespace {

// Inline payloads are messages (bounded by max_message_bytes, checked again
// at the gRPC surface) or small frames; the margin covers a peer whose
// message limit is a little larger than ours, so an oversize message is a
// RESOURCE_EXHAUSTED call and not a dropped connection.
size_t MaxInlineBytes(const Options& options) {
  return std::max(shm::kDefaultMaxInlineBytes,
                  options.max_message_bytes + (size_t{1} << 20));
}

// A session's messages waiting for its peer take at most arena_bytes of
// shared memory and, once that is full, arena_bytes more of heap as inline
// records, which wait at most stalled_peer_timeout for a peer that reads
// none of them.
shm::InlineLimits SessionInlineLimits(const Options& options) {
  shm::InlineLimits limits;
  limits.max_record_bytes = MaxInlineBytes(options);
  limits.stall_timeout = options.stalled_peer_timeout;
  limits.max_queued_bytes = options.arena_bytes;
  return limits;
}

absl::StatusOr<PeerCredentials> ReadPeerCredentials(int sock) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return absl::InternalError(absl::StrCat("SO_PEERCRED: ", strerror(errno)));
  }
  return PeerCredentials{cred.pid, cred.uid, cred.gid};
}

absl::Status CheckPolicy(const PeerCredentials& peer, const Options& options) {
  // Root could read or write this process's memory anyway.
  if (options.peer_uid_policy == PeerUidPolicy::kAnyUid ||
      peer.uid == getuid() || peer.uid == 0 ||
      std::find(options.allowed_peer_uids.begin(),
                options.allowed_peer_uids.end(),
                peer.uid) != options.allowed_peer_uids.end()) {
    return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat(
      "peer pid ", peer.pid, " runs as uid ", peer.uid,
      ", not this process's (", getuid(), "), root or an allowed uid"));
}

// Handshake deadlines are monotonic: a step of the wall clock must not
// stretch or cut a handshake.
using Deadline = shm::SteadyTime;

absl::Duration Remaining(Deadline deadline) {
  return std::max(
      absl::ZeroDuration(),
      absl::FromChrono(deadline - std::chrono::steady_clock::now()));
}

// Builds this side's segment from the options.
absl::StatusOr<std::pair<std::unique_ptr<shm::Arena>, shm::SegmentLayout>>
MakeLocalSegment(const Options& options, const char* name) {
  absl::StatusOr<shm::SegmentLayout> layout =
      shm::SegmentLayout::Compute(options.arena_bytes, options.ring_slots);
  if (!layout.ok()) return layout.status();
  absl::StatusOr<std::unique_ptr<shm::Arena>> arena =
      shm::CreateSegment(name, *layout);
  if (!arena.ok()) return arena.status();
  return std::make_pair(std::move(*arena), *layout);
}

// Maps the peer's announced segment; takes ownership of `fd`.
absl::StatusOr<std::pair<std::unique_ptr<shm::Arena>, shm::SegmentLayout>>
MapPeer(int fd, uint64_t data_bytes, uint32_t ring_slots) {
  absl::StatusOr<shm::SegmentLayout> layout =
      shm::SegmentLayout::Compute(data_bytes, ring_slots);
  if (!layout.ok() || layout->data_bytes != data_bytes) {
    if (fd >= 0) close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat("peer announced an invalid segment (", data_bytes,
                     " bytes, ", ring_slots, " slots)"));
  }
  absl::StatusOr<std::unique_ptr<shm::Arena>> arena =
      shm::MapPeerSegment(fd, *layout);
  if (!arena.ok()) return arena.status();
  return std::make_pair(std::move(*arena), *layout);
}

}  // namespace

namespace {

// Marks ConnectUnix's failure: nothing listens at the path.
constexpr absl::string_view kNoShmSocketPayload = "shmgrpc/no-shm-socket";

// A unix socket, its address and the address's length, or why not.
struct UnixSocket {
  int fd;
  sockaddr_un addr;
  socklen_t addr_len;
};
absl::StatusOr<UnixSocket> UnixSocketFor(const std::string& path) {
  UnixSocket unix_socket{-1, {}, 0};
  sockaddr_un& addr = unix_socket.addr;
  addr.sun_family = AF_UNIX;
  // A file path ends with its NUL; an abstract name is exactly its bytes.
  const size_t bytes =
      IsAbstractSocketPath(path) ? path.size() : path.size() + 1;
  if (path.empty() || bytes > sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad unix socket address: '", PrintableSocketPath(path), "'"));
  }
  std::memcpy(addr.sun_path, path.data(), bytes);
  unix_socket.addr_len =
      static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + bytes);
  unix_socket.fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (unix_socket.fd < 0) {
    return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  }
  return unix_socket;
}

}  // namespace

bool IsAbstractSocketPath(const std::string& path) {
  return !path.empty() && path[0] == '\0';
}

std::string PrintableSocketPath(const std::string& path) {
  return IsAbstractSocketPath(path) ? "@" + path.substr(1) : path;
}

absl::StatusOr<int> ConnectUnix(const std::string& path) {
  absl::StatusOr<UnixSocket> unix_socket = UnixSocketFor(path);
  if (!unix_socket.ok()) return unix_socket.status();
  if (connect(unix_socket->fd,
              reinterpret_cast<const sockaddr*>(&unix_socket->addr),
              unix_socket->addr_len) != 0) {
    const int err = errno;
    close(unix_socket->fd);
    absl::Status status = absl::UnavailableError(absl::StrCat(
        "connect ", PrintableSocketPath(path), ": ", strerror(err)));
    status.SetPayload(kNoShmSocketPayload, absl::Cord());
    return status;
  }
  return unix_socket->fd;
}

bool IsNoShmSocket(const absl::Status& status) {
  return status.GetPayload(kNoShmSocketPayload).has_value();
}

absl::StatusOr<int> ListenUnix(const std::string& path) {
  absl::StatusOr<UnixSocket> unix_socket = UnixSocketFor(path);
  if (!unix_socket.ok()) return unix_socket.status();
  // A stale socket file from a previous run (an abstract name goes away
  // with its last socket).
  if (!IsAbstractSocketPath(path)) unlink(path.c_str());
  if (bind(unix_socket->fd,
           reinterpret_cast<const sockaddr*>(&unix_socket->addr),
           unix_socket->addr_len) != 0 ||
      listen(unix_socket->fd, 128) != 0) {
    const int err = errno;
    close(unix_socket->fd);
    return absl::UnavailableError(absl::StrCat(
        "listen on ", PrintableSocketPath(path), ": ", strerror(err)));
  }
  return unix_socket->fd;
}

namespace {

// What the client says when the server refused it.
absl::Status RefusalStatus(uint16_t result) {
  switch (result) {
    case kBadMagic:
      return absl::UnavailableError("shm handshake: server saw a bad magic");
    case kNoCommonVersion:
      return absl::UnavailableError(
          "shm handshake: no protocol version in common with the server");
    case kPeerNotAllowed:
      return absl::PermissionDeniedError(
          "shm handshake: the server's peer policy refused this process");
    case kBadSegment:
      return absl::UnavailableError(
          "shm handshake: the server refused this side's segment");
    case kNoSharedMemory:
      return absl::ResourceExhaustedError(
          "shm handshake: the server has no memory for a session's segment");
    case kTooManySessions:
      return absl::ResourceExhaustedError(
          "shm handshake: the server is at its session limit");
    case kServerBusy:
      return absl::UnavailableError(
          "shm handshake: the server is busy with other handshakes");
    case kNoThread:
      return absl::ResourceExhaustedError(
          "shm handshake: the server has no thread for a session");
    default:
      return absl::UnavailableError(
          absl::StrCat("shm handshake: server refused (reason ", result, ")"));
  }
}

absl::StatusOr<Handshaken> ExchangeSegments(
    int sock, const Options& options, Deadline deadline,
    std::pair<std::unique_ptr<shm::Arena>, shm::SegmentLayout> local) {
  const Hello hello{kHandshakeMagic,         kMinProtocolVersion,
                    kMaxProtocolVersion,     0,
                    local.second.ring_slots, local.second.data_bytes};
  if (absl::Status s =
          shm::SendWithFd(sock, &hello, sizeof(hello), local.first->fd());
      !s.ok()) {
    // A server whose peer policy refuses this process answers and closes
    // before it reads the hello, so the send can fail: its answer says why.
    Welcome refusal;
    int fd = -1;
    if (shm::RecvWithFd(sock, &refusal, sizeof(refusal), &fd,
                        absl::ZeroDuration())
            .ok() &&
        refusal.magic == kHandshakeMagic && refusal.result != kAccepted) {
      if (fd >= 0) close(fd);
      return RefusalStatus(refusal.result);
    }
    if (fd >= 0) close(fd);
    return s;
  }
  Welcome welcome;
  int peer_fd = -1;
  if (absl::Status s = shm::RecvWithFd(sock, &welcome, sizeof(welcome),
                                       &peer_fd, Remaining(deadline));
      !s.ok()) {
    return absl::UnavailableError(
        absl::StrCat("shm handshake: no welcome: ", s.message()));
  }
  if (welcome.magic != kHandshakeMagic) {
    if (peer_fd >= 0) close(peer_fd);
    return absl::UnavailableError("shm handshake: server is not shmgrpc");
  }
  if (welcome.result != kAccepted) {
    if (peer_fd >= 0) close(peer_fd);
    return RefusalStatus(welcome.result);
  }
  if (welcome.version < kMinProtocolVersion ||
      welcome.version > kMaxProtocolVersion) {
    if (peer_fd >= 0) close(peer_fd);
    return absl::UnavailableError(absl::StrCat(
        "shm handshake: server chose unsupported version ", welcome.version));
  }
  WelcomeLimits limits;
  int stray_fd = -1;
  if (absl::Status s = shm::RecvWithFd(sock, &limits, sizeof(limits), &stray_fd,
                                       Remaining(deadline));
      !s.ok() || stray_fd >= 0) {
    if (stray_fd >= 0) close(stray_fd);
    if (peer_fd >= 0) close(peer_fd);
    return absl::UnavailableError(
        absl::StrCat("shm handshake: no limits after the welcome: ",
                     s.ok() ? "an extra fd came" : s.message()));
  }
  auto peer = MapPeer(peer_fd, welcome.data_bytes, welcome.ring_slots);
  if (!peer.ok()) return peer.status();
  absl::StatusOr<PeerCredentials> credentials = ReadPeerCredentials(sock);
  if (!credentials.ok()) return credentials.status();
  if (absl::Status s = CheckPolicy(*credentials, options); !s.ok()) return s;
  Handshaken result;
  result.peer = *credentials;
  result.version = welcome.version;
  result.peer_stream_window = limits.stream_window;
  result.max_concurrent_streams = limits.max_concurrent_streams;
  result.endpoint = std::make_unique<shm::Endpoint>(
      std::move(local.first), local.second, std::move(peer->first),
      peer->second, sock, options.wait, SessionInlineLimits(options));
  return result;
}

}  // namespace

absl::StatusOr<Handshaken> ClientHandshake(const std::string& shm_path,
                                           const Options& options) {
  const Deadline deadline = shm::SteadyDeadlineAfter(options.handshake_timeout);
  // Two cheap checks before the segment's 64 MiB fallocate: that this
  // process has room for it (else it would only trouble the server), and
  // that the server has an shm socket at all (else, the plain-server case,
  // every reconnect attempt would pay for a segment it cannot use).
  absl::StatusOr<shm::SegmentLayout> layout =
      shm::SegmentLayout::Compute(options.arena_bytes, options.ring_slots);
  if (!layout.ok()) return layout.status();
  if (absl::Status room = shm::CheckMemoryHeadroom(layout->total_bytes,
                                                   shm::kArenaMemoryReserve);
      !room.ok()) {
    return room;
  }
  absl::StatusOr<int> connected = ConnectUnix(shm_path);
  if (!connected.ok()) return connected.status();
  const int sock = *connected;
  auto local = MakeLocalSegment(options, "shmgrpc-client");
  if (!local.ok()) {
    close(sock);
    return local.status();
  }
  absl::StatusOr<Handshaken> result =
      ExchangeSegments(sock, options, deadline, std::move(*local));
  if (!result.ok()) close(sock);
  return result;
}

void RefuseHandshake(int sock, HandshakeRefusal reason) {
  const Welcome refusal{kHandshakeMagic, 0, reason, 0, 0, 0};
  shm::SendWithFd(sock, &refusal, sizeof(refusal), -1).IgnoreError();
}

absl::StatusOr<Handshaken> ServerHandshake(
    int sock, const Options& options,
    absl::FunctionRef<absl::Status()> before_welcome) {
  const Deadline deadline = shm::SteadyDeadlineAfter(options.handshake_timeout);
  auto refuse = [&](HandshakeRefusal reason, absl::Status why) {
    RefuseHandshake(sock, reason);
    return why;
  };
  absl::StatusOr<PeerCredentials> credentials = ReadPeerCredentials(sock);
  if (!credentials.ok()) return credentials.status();
  if (absl::Status s = CheckPolicy(*credentials, options); !s.ok()) {
    return refuse(kPeerNotAllowed, s);
  }
  // Made before the hello is read, while the client makes its own segment:
  // the two fallocates (~15 ms each for 64 MiB here) overlap instead of
  // adding up. Only a peer the policy allows gets this far.
  auto local = MakeLocalSegment(options, "shmgrpc-server");
  if (!local.ok()) {
    if (local.status().code() != absl::StatusCode::kResourceExhausted) {
      return local.status();
    }
    return refuse(kNoSharedMemory, local.status());
  }
  Hello hello;
  int peer_fd = -1;
  if (absl::Status s = shm::RecvWithFd(sock, &hello, sizeof(hello), &peer_fd,
                                       Remaining(deadline));
      !s.ok()) {
    return absl::Status(
        s.code(), absl::StrCat("reading hello from pid ", credentials->pid,
                               ": ", s.message()));
  }
  if (hello.magic != kHandshakeMagic) {
    if (peer_fd >= 0) close(peer_fd);
    return refuse(kBadMagic, absl::InvalidArgumentError(absl::StrCat(
                                 "bad hello magic 0x", absl::Hex(hello.magic),
                                 " from pid ", credentials->pid)));
  }
  const uint16_t version = std::min(hello.max_version, kMaxProtocolVersion);
  if (hello.min_version > hello.max_version ||
      version < std::max(hello.min_version, kMinProtocolVersion)) {
    if (peer_fd >= 0) close(peer_fd);
    return refuse(kNoCommonVersion,
                  absl::FailedPreconditionError(absl::StrCat(
                      "no common protocol version: client speaks ",
                      hello.min_version, "..", hello.max_version, ", server ",
                      kMinProtocolVersion, "..", kMaxProtocolVersion)));
  }
  if (peer_fd < 0) {
    return refuse(kBadSegment,
                  absl::InvalidArgumentError("hello carried no segment fd"));
  }
  auto peer = MapPeer(peer_fd, hello.data_bytes, hello.ring_slots);
  if (!peer.ok()) return refuse(kBadSegment, peer.status());
  if (absl::Status ready = before_welcome(); !ready.ok()) {
    return refuse(kNoThread, ready);
  }
  struct {
    Welcome welcome;
    WelcomeLimits limits;
  } answer{{kHandshakeMagic, version, kAccepted, 0, local->second.ring_slots,
            local->second.data_bytes},
           {EncodeWindowLimits(OwnWindowLimits(options.stream_window_bytes,
                                               options.stream_window_messages)),
            options.max_concurrent_streams}};
  static_assert(sizeof(answer) == sizeof(Welcome) + sizeof(WelcomeLimits));
  if (absl::Status s =
          shm::SendWithFd(sock, &answer, sizeof(answer), local->first->fd());
      !s.ok()) {
    return s;
  }
  Handshaken result;
  result.peer = *credentials;
  result.version = version;
  result.max_concurrent_streams = options.max_concurrent_streams;
  result.endpoint = std::make_unique<shm::Endpoint>(
      std::move(local->first), local->second, std::move(peer->first),
      peer->second, sock, options.wait, SessionInlineLimits(options));
  return result;
}

}  // namespace shmgrpc::transport
