// The shm session handshake over a unix socket.
//
//   client -> server: Hello {magic, min/max version, features, data_bytes,
//                     ring_slots} + the client's segment fd (SCM_RIGHTS)
//   server -> client: Welcome {magic, version, result, features, data_bytes,
//                     ring_slots} + WelcomeLimits + the server's segment fd,
//                     or a refusal (the Welcome alone: result != 0, no fd)
//                     and close.
//
// Both sides verify the other's fd (seals, size, header) before use; the
// server checks SO_PEERCRED against the uid policy before answering; versions
// negotiate to the highest both speak. Version 2 added WelcomeLimits: the
// server's stream window, which its clients keep to and it enforces
// (flow_window.h); version 3 its limit of concurrent streams per session
// (stream_slots.h). Older peers, which could not be held to these, are
// refused (kNoCommonVersion: their calls go plain). The whole exchange is
// bounded by Options::handshake_timeout. On any failure the caller closes
// the socket; the returned status says why (logged by the server).
#ifndef SHMGRPC_TRANSPORT_HANDSHAKE_H_
#define SHMGRPC_TRANSPORT_HANDSHAKE_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "shm/endpoint.h"
#include "transport/options.h"

namespace shmgrpc::transport {

inline constexpr uint32_t kHandshakeMagic = 0x31475353;  // "SSG1"
inline constexpr uint16_t kMinProtocolVersion = 3;
inline constexpr uint16_t kMaxProtocolVersion = 3;

// Wire structs (fixed size, little-endian, no padding surprises).
struct Hello {
  uint32_t magic;
  uint16_t min_version;
  uint16_t max_version;
  uint32_t features;
  uint32_t ring_slots;
  uint64_t data_bytes;
};
static_assert(sizeof(Hello) == 24);

struct Welcome {
  uint32_t magic;
  uint16_t version;
  uint16_t result;  // 0: accepted; else a HandshakeRefusal
  uint32_t features;
  uint32_t ring_slots;
  uint64_t data_bytes;
};
static_assert(sizeof(Welcome) == 24);

// Follows an accepting Welcome in the same message.
struct WelcomeLimits {
  // The server's receive window per stream (EncodeWindowLimits).
  uint64_t stream_window;
  // Streams the client may have open on the session at once (StreamSlots);
  // 0: no limit.
  uint64_t max_concurrent_streams;
};
static_assert(sizeof(WelcomeLimits) == 16);

enum HandshakeRefusal : uint16_t {
  kAccepted = 0,
  kBadMagic = 1,
  kNoCommonVersion = 2,
  kPeerNotAllowed = 3,
  kBadSegment = 4,
  kNoSharedMemory = 5,   // the server cannot make its segment (memory limit)
  kTooManySessions = 6,  // the server is at Options::max_sessions
  kServerBusy = 7,       // the server has too many handshakes under way
  kNoThread = 8,         // the server cannot start the session's threads
};

// The verified identity of the process on the other end (SO_PEERCRED).
struct PeerCredentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

struct Handshaken {
  std::unique_ptr<shm::Endpoint> endpoint;  // owns the socket
  PeerCredentials peer;
  uint16_t version = 0;
  // Client side: the server's receive window per stream, as its
  // WelcomeLimits said (EncodeWindowLimits); 0 on the server side.
  uint64_t peer_stream_window = 0;
  // Both sides: streams the client may have open on the session at once
  // (the server's Options::max_concurrent_streams; 0: no limit).
  uint64_t max_concurrent_streams = 0;
};

// Client side: checks that this process has memory for its segment
// (memory_headroom.h; ResourceExhausted without troubling the server),
// connects to the server's shm socket at `shm_path` (Unavailable "connect
// ..." when there is none, before any segment is made), makes its segment
// and handshakes. The endpoint owns the socket on success; on failure it is
// closed.
absl::StatusOr<Handshaken> ClientHandshake(const std::string& shm_path,
                                           const Options& options);

// Server side, on an accepted socket (same ownership rule).
// `before_welcome` runs once the hello is verified, just before the welcome
// commits the server (from then on its client may send calls): the place to
// get what the session needs. Its error is answered with kNoThread instead
// of the welcome, and returned.
absl::StatusOr<Handshaken> ServerHandshake(
    int sock, const Options& options,
    absl::FunctionRef<absl::Status()> before_welcome);
inline absl::StatusOr<Handshaken> ServerHandshake(int sock,
                                                  const Options& options) {
  return ServerHandshake(sock, options, [] { return absl::OkStatus(); });
}

// Refuses a connection before any exchange (the server is at its session
// limit, or busy with other handshakes): sends the refusal without reading the
// hello, which a client reads even when its hello could not be sent. The caller
// closes the socket.
void RefuseHandshake(int sock, HandshakeRefusal reason);

// Unix socket addresses below are a file path, or an abstract-namespace
// name as a NUL byte and the name (what UnixPathOf makes of a
// "unix-abstract:" target): no file, gone with its last socket, and open to
// any process in the network namespace, so the peer's uid check matters.
bool IsAbstractSocketPath(const std::string& path);
// For messages: an abstract name as "@name", as /proc/net/unix shows it.
std::string PrintableSocketPath(const std::string& path);

// Connects a SOCK_STREAM unix socket to `path` (CLOEXEC).
absl::StatusOr<int> ConnectUnix(const std::string& path);
// True for ClientHandshake's failure when nothing listens at the shm socket
// (the server has no shm, or is restarting): the ordinary plain case. Told
// by a status payload ConnectUnix sets, not by the message.
bool IsNoShmSocket(const absl::Status& status);
// Binds and listens on `path` (replacing a stale socket file), CLOEXEC.
absl::StatusOr<int> ListenUnix(const std::string& path);

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_HANDSHAKE_H_
