// Options for shm channels and servers, with their defaults.
#ifndef SHMGRPC_TRANSPORT_OPTIONS_H_
#define SHMGRPC_TRANSPORT_OPTIONS_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "shm/wait_options.h"

namespace shmgrpc {

enum class PeerUidPolicy {
  kSameUid,  // a peer running as this process's uid, as root (which could
             // read this process's memory anyway), or as one in
             // Options::allowed_peer_uids (default)
  kAnyUid,   // anyone who can connect to the socket
};

struct Options {
  // Data area of the arena this side writes into, per session. A new call
  // whose request does not fit goes over plain gRPC; a message inside a call
  // that does not fit travels inline on the socket (see README, fallback).
  size_t arena_bytes = 64 << 20;
  // Descriptors per ring (power of two).
  uint32_t ring_slots = 4096;
  // Largest block one message may take; a larger message (or one no free
  // run can hold) is serialized across a chain of 64 KiB-page blocks. 0: no
  // limit, so a message takes one block whenever a free run fits it.
  size_t max_block_bytes = 0;
  // How this side's session thread waits for frames: notify, spinning up to
  // 100 us (adaptive, yielding the core after 2 us) before sleeping on the
  // doorbell. The spin is what makes a small call fast: each sleeping hop on
  // the call path costs ~20 us to wake a halted vCPU, and a yielding spinner
  // both catches the reply without a doorbell and keeps its vCPU awake for
  // the handler and caller threads. Measured on 2 vCPUs, gRPC unary 64 B
  // p50: 145 us with a 10 us pause-only spin, 49 us with this (UDS 155-180).
  // Costs up to 100 us of CPU per idle period per session thread.
  shm::WaitOptions wait;
  // Client: the largest message sent or received over shm when the channel
  // arguments set no message limit (gRPC's default receive limit). Limits
  // set there (SetMaxSendMessageSize / SetMaxReceiveMessageSize) apply
  // instead, as on a plain channel, up to the 64 MiB a session carries (or
  // this, when larger). A call whose first request is over the limit goes
  // plain, so gRPC judges it as without shm; a later message or reply over
  // it is RESOURCE_EXHAUSTED. Both sides: inline payloads (messages that do
  // not fit the arena) are accepted up to the larger of 64 MiB and this plus
  // 1 MiB; above 64 MiB, set it alike on both sides.
  size_t max_message_bytes = 4 << 20;
  // A call whose request metadata is larger (keys + values + 32 bytes per
  // entry, as HTTP/2 counts it) goes over plain gRPC, so that gRPC's own
  // metadata limit decides it exactly as it would without shm. (That limit
  // is 8 KiB by default, with quirks: a single 5.7 KiB value was already
  // refused here, RESOURCE_EXHAUSTED.) Metadata this small is never refused
  // by a default gRPC server. Raise it to keep larger metadata on shm, up to
  // the frame limit of 64 KiB of keys and values.
  size_t max_shm_metadata_bytes = 4096;
  // Client: methods, as "/package.Service/Method", to carry over shm although
  // the generated descriptor pool does not know them, i.e. services compiled
  // with `option optimize_for = LITE_RUNTIME`. Only calls from generated stubs
  // (which pass protobuf messages) are affected; calls of other methods that
  // the pool does not know, and every GenericStub call, go plain.
  std::vector<std::string> protobuf_methods;
  // Client: also carry over shm the calls this channel's application makes
  // through grpc::GenericStub, whose messages are grpc::ByteBuffers (a
  // proxy's or sidecar's forwarding leg). gRPC shows an interceptor neither
  // a message's type nor whether a call came from a GenericStub, only that
  // its method name was made at run time: set this only if every such call
  // on the channel passes ByteBuffers (a TemplatedGenericStub of any other
  // type would be handed ByteBuffers: undefined behaviour). Off: such calls
  // go plain.
  bool carry_generic_stub_calls = false;
  // Streaming calls, per stream and direction: at most this many messages
  // or bytes sent and not yet consumed by the receiving application; a
  // writer beyond that waits (bounded by the call's deadline), as gRPC's own
  // flow control would make it. Unary calls are not limited. Each side
  // advertises its values as a reader (the server in the handshake, a client
  // with each stream); a writer keeps to the smaller of its own and its
  // reader's, so client and server need not agree, and a peer writing past
  // the advertised window ends that call INTERNAL. Messages are capped at
  // 65,535 (what one credit returns).
  size_t stream_window_bytes = 1 << 20;
  uint32_t stream_window_messages = 64;
  // Whole handshake, either side.
  absl::Duration handshake_timeout = absl::Seconds(1);
  // A peer that stops reading its ring (stopped by SIGSTOP or a frozen
  // cgroup, not dead) without closing it: a server's write to it waits
  // until the call's deadline, 5 s, or this, whichever comes first, then
  // ends that call; the call's status (server), or a client's cancel to
  // such a server, is kept and sent once the peer reads again, so neither
  // end's call is lost. A peer that reads nothing for this long while such
  // a frame waits for it has its session closed instead, which ends its
  // calls at both ends (UNAVAILABLE at the client) and frees their memory.
  // 0: closed as soon as such a frame finds the peer's ring full.
  absl::Duration stalled_peer_timeout = absl::Seconds(30);
  // Client: while there is no session (server gone, restarting, or without
  // shm), retry the handshake after this delay, doubling up to the maximum.
  // Calls meanwhile use plain gRPC.
  absl::Duration reconnect_backoff_initial = absl::Milliseconds(50);
  absl::Duration reconnect_backoff_max = absl::Seconds(2);
  // Client: channels of a process to one server with the same session
  // options share one session; once the last of them is destroyed, the
  // session stays open this long, so that a channel made meanwhile (an app
  // making a channel per request) uses it at once instead of handshaking
  // anew (~20-40 ms: both arenas are made and fallocated). Its arenas stay
  // held that long. The setting of the channel that opened the session
  // applies. 0: the session closes with its last channel.
  absl::Duration session_linger = absl::Seconds(1);
  // Server: at most this many open sessions (client processes on shm); 0: no
  // limit. Each holds an arena of arena_bytes, fallocated, on this side. A
  // client beyond the limit is refused (RESOURCE_EXHAUSTED, logged), its
  // calls go plain, and it retries with its reconnect backoff, so it gets
  // shm once a session closes.
  size_t max_sessions = 0;
  // Server: streams (calls) one session may have open at once, as HTTP/2's
  // SETTINGS_MAX_CONCURRENT_STREAMS limits one connection; 0: no limit.
  // Each open stream is an in-process call on the server (and, for a sync
  // service, a handler thread while it runs). The server advertises it in
  // the handshake; a client at the limit sends its next calls over plain
  // gRPC until one of its streams ends, and a stream over it (only a client
  // ignoring the limit sends one) is refused RESOURCE_EXHAUSTED.
  uint32_t max_concurrent_streams = 1000;
  PeerUidPolicy peer_uid_policy = PeerUidPolicy::kSameUid;
  // kSameUid: further uids whose processes may open sessions, e.g. the apps
  // a sidecar running as its own user serves. (A peer also needs write
  // permission on the socket file; abstract sockets have none.)
  std::vector<uid_t> allowed_peer_uids;
};

}  // namespace shmgrpc

#endif  // SHMGRPC_TRANSPORT_OPTIONS_H_
