// Session: one handshaken shm connection and the thread that reads it.
//
// The session thread loops on Endpoint::Receive and hands every valid frame
// to `on_frame` (which takes ownership of the message: it must call
// Release() on it, from any thread, when done). Frames with an unknown type
// are logged, released and skipped; a hostile descriptor is logged and
// skipped (the endpoint keeps working). When the peer goes away or
// Shutdown() is called, the thread shuts the socket down, frees every block
// of this side's arena the peer still held, calls `on_closed` once and exits.
//
// Sends are thread-safe. Messages are serialized in place into a block of
// this side's arena; one that no single block can hold (no free run that
// large, or larger than `max_block_bytes`) is serialized across a chain of
// blocks, sent as kMessage frames flagged kMessageContinuesFlag but the last.
// A payload that cannot get shared memory at all (arena full, or larger than
// the arena) is serialized to the heap and sent inline on the socket, in
// order with the rest of its stream; the next payload tries shared memory
// again, so traffic returns to it as soon as blocks free up.
#ifndef SHMGRPC_TRANSPORT_SESSION_H_
#define SHMGRPC_TRANSPORT_SESSION_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "codec/frame_type.h"
#include "codec/message_codec.h"
#include "google/protobuf/message_lite.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "shm/endpoint.h"
#include "shm/thread.h"
#include "transport/handshake.h"
#include "transport/inbound_message.h"
#include "transport/log_rate_limiter.h"
#include "transport/stream_slots.h"

namespace shmgrpc::transport {

// How a session's payloads left when one block was not enough.
struct SendPathStats {
  uint64_t chained = 0;            // messages split over several blocks
  uint64_t inline_arena_full = 0;  // inline: not enough free shared memory
  uint64_t inline_too_large = 0;   // inline: larger than the whole arena
  // Sent as arena slices, written there before gRPC carried them (never
  // copied; see Session::WriteArenaSlice).
  uint64_t arena_slices = 0;
  // Unary replies and stream responses that could not go out at once from
  // the thread that produced them (no room in the ring, or no single block,
  // or an earlier frame of the stream still waiting) and were sent by the
  // session's completion thread.
  uint64_t replies_deferred = 0;
  SendPathStats& operator+=(const SendPathStats& other) {
    chained += other.chained;
    inline_arena_full += other.inline_arena_full;
    inline_too_large += other.inline_too_large;
    arena_slices += other.arena_slices;
    replies_deferred += other.replies_deferred;
    return *this;
  }
};

// A frame built ahead of its send: its payload (if any) already in a block
// of this side's arena, so that it can go out with others at once
// (Session::TrySendPrepared), or later from another thread.
struct PreparedFrame {
  shm::Descriptor descriptor;
  std::optional<shm::Block> block;
  bool arena_slice = false;  // the block was an arena slice (WriteArenaSlice)
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  using FrameHandler = std::function<void(const shm::ReceivedMessage&)>;
  using ClosedHandler = std::function<void(const absl::Status&)>;

  // A session over a finished handshake. Nothing is received and no handler
  // runs until Start(), so the owner can store the pointer first: a peer
  // that sends right after the handshake (every client does) must not reach
  // a handler that cannot find its session yet.
  // `max_block_bytes`: largest block one message may take (0: no limit;
  // larger messages are chained). `stalled_peer_timeout`: see PostFrame.
  static std::shared_ptr<Session> Create(
      Handshaken handshaken, FrameHandler on_frame, ClosedHandler on_closed,
      size_t max_block_bytes = 0,
      absl::Duration stalled_peer_timeout = absl::Seconds(30));
  // Starts the session thread, once. The handlers may run until Shutdown()
  // returns. Must happen before any Shutdown() from another thread. The
  // session then lives at least until its thread ends, so the owner must
  // call Shutdown() (or the peer must go away) for it to be freed.
  // ResourceExhausted when no thread can be started (shm/thread.h): then no
  // handler ever runs, and the owner shuts the session down.
  absl::Status Start();
  // The same on a thread the owner reserved before it committed to the
  // session (a server, before its welcome): cannot fail.
  void Start(shm::ReservedThread thread);
  ~Session();

  // `size` is codec::SerializedSize(message), computed by the caller (once)
  // on the unchanged message. `flags`: descriptor flags of its frames
  // (codec::kWindowFullFlag).
  absl::Status SendMessage(uint64_t stream,
                           const google::protobuf::MessageLite& message,
                           size_t size, absl::Time deadline,
                           uint16_t flags = 0);
  // A buffer that is exactly one arena slice of this session (below) sends
  // that block as it is; any other buffer is copied into the arena.
  absl::Status SendByteBuffer(uint64_t stream, const grpc::ByteBuffer& buffer,
                              absl::Time deadline, uint16_t flags = 0);
  // A reply written into shared memory before gRPC carries it (server side,
  // see arena_replies.h): a fresh block of this side's arena of `size`
  // bytes on `stream`, filled by `fill`, as a slice gRPC can carry. The
  // slice keeps this session (and so the mapping) alive. Handed back to
  // SendByteBuffer it is sent as it is; dropped by gRPC unsent, its block
  // is freed. ResourceExhausted when no single block can hold it now, or
  // the session has closed: the caller leaves the message to gRPC.
  absl::StatusOr<grpc::Slice> WriteArenaSlice(
      uint64_t stream, size_t size, absl::FunctionRef<void(uint8_t*)> fill);
  // Random, fixed for the session's life: names it to whoever was told it
  // (arena_replies.h), which a guessing client cannot.
  uint64_t token() const { return token_; }
  // How long a frame the peer must not miss waits for it (PostFrame).
  absl::Duration stalled_peer_timeout() const { return stalled_peer_timeout_; }
  // A frame whose payload is `bytes` (copied into a block), or none if empty.
  // `aux`: the descriptor's aux word (a kCallHeaders frame's advertised
  // window).
  absl::Status SendFrame(codec::FrameType type, uint64_t stream,
                         absl::string_view bytes, absl::Time deadline,
                         uint16_t flags = 0, uint64_t aux = 0);
  // Prepared frames (see PreparedFrame), for a thread that must not wait
  // for the peer: nullopt when the payload gets no single block now (the
  // caller then sends it the usual way) or the session has closed. A
  // prepared frame is the caller's until sent, or freed with FreePrepared.
  std::optional<PreparedFrame> PrepareFrame(codec::FrameType type,
                                            uint64_t stream,
                                            absl::string_view bytes);
  // A kMessage of `buffer`: its arena slice as it is (see SendByteBuffer),
  // else copied into one block.
  std::optional<PreparedFrame> PrepareByteBuffer(
      uint64_t stream, const grpc::ByteBuffer& buffer);
  // All of `frames`, in order, or none, without waiting for the peer
  // (Endpoint::TrySendAll): ResourceExhausted when the ring has no room
  // for them now; unsent frames stay the caller's.
  absl::Status TrySendPrepared(absl::Span<const PreparedFrame> frames);
  // One frame, waiting for room until `deadline`; unsent, it stays the
  // caller's.
  absl::Status SendPrepared(const PreparedFrame& frame, absl::Time deadline);
  void FreePrepared(const PreparedFrame& frame);
  // Counts a reply that its owner left to a thread that may wait
  // (SendPathStats::replies_deferred).
  void CountDeferredReply() {
    replies_deferred_.fetch_add(1, std::memory_order_relaxed);
  }
  // A frame without payload (kWindowUpdate, kCancel) carrying `aux`.
  absl::Status SendControl(codec::FrameType type, uint64_t stream, uint64_t aux,
                           absl::Time deadline);
  // The same from a thread that must never wait (a session thread: see
  // ARCHITECTURE, "no reader waits on a writer"): tried at once; if the ring
  // or the send lock is busy, queued — in order, behind anything queued
  // before — for a short-lived thread that waits for room until `deadline`.
  // Best effort: a frame for a closed session is dropped. Should no thread
  // be left to start, the session is closed (a frame the peer waits for,
  // e.g. a credit, must not vanish while the session goes on).
  // `slot` (a kCancel's stream) is returned once the frame is in the ring
  // or the session is gone; if it could not be sent meanwhile, never.
  void PostControl(codec::FrameType type, uint64_t stream, uint64_t aux,
                   absl::Time deadline, StreamSlot slot = StreamSlot());
  // A frame whose payload is `bytes` (copied into a block now; none if
  // empty), posted the same way, for a frame the peer must not miss (a
  // call's status, a client's kCancel) while it may have stopped reading:
  // it goes out, in order, once the peer reads again. Should the peer read
  // nothing for the session's `stalled_peer_timeout` (Options), or should
  // no block be had, the session is closed instead, which ends the calls on
  // it at both ends (so none waits or runs on forever). `slot` as for
  // PostControl.
  void PostFrame(codec::FrameType type, uint64_t stream,
                 absl::string_view bytes, StreamSlot slot = StreamSlot());
  void Release(const shm::ReceivedMessage& message) {
    endpoint_->Release(message);
  }
  void Release(const InboundMessage& message) {
    for (const shm::ReceivedMessage& frame : message.frames) {
      endpoint_->Release(frame);
    }
  }

  // Streams under way whose frames the peer is working on (the owners count
  // unary calls in flight, and streams while a message sent awaits one
  // back; an open stream may idle for hours, and then it does not count).
  // The session thread tells its endpoint: while
  // there are more than WaitOptions::max_busy_streams_for_spin, it stops
  // spinning for frames once other threads take its core. Each Add needs
  // one Remove.
  void AddBusyStream() {
    busy_streams_.fetch_add(1, std::memory_order_relaxed);
  }
  void RemoveBusyStream() {
    busy_streams_.fetch_sub(1, std::memory_order_relaxed);
  }
  int busy_streams() const {
    return busy_streams_.load(std::memory_order_relaxed);
  }

  // Logs `what` the peer did (a hostile descriptor, a frame or call it
  // should not have sent), as "session with pid P: what", at most one line
  // of each `kind` per 10 s: a hostile peer could otherwise flood stderr.
  void LogPeerError(const std::string& kind, absl::string_view what);

  bool alive() const { return alive_.load(std::memory_order_acquire); }
  const PeerCredentials& peer() const { return peer_; }
  // Client side: the server's receive window per stream, as the handshake
  // advertised it (flow_window.h, SenderLimits); 0 on the server side.
  uint64_t peer_stream_window() const { return peer_stream_window_; }
  // Both sides: the streams the client has open on this session, against
  // the limit the server advertised (stream_slots.h).
  StreamSlots& stream_slots() { return stream_slots_; }
  shm::EndpointStats Stats() const { return endpoint_->Stats(); }
  SendPathStats send_path_stats() const;
  // Largest payload this side's arena could ever hold (one block spanning
  // the whole data area); anything larger can only travel inline.
  size_t capacity_bytes() const { return capacity_bytes_; }
  // Largest message the peer may send on this session, chained or inline:
  // the inline limit, max(64 MiB, Options::max_message_bytes + 1 MiB), which
  // no message from a client within its own limits exceeds.
  size_t max_received_message_bytes() const {
    return endpoint_->max_inline_bytes();
  }
  // Blocks of this side's arena the peer still held when the session closed
  // (all freed then); 0 while alive.
  uint64_t blocks_reclaimed() const {
    return blocks_reclaimed_.load(std::memory_order_acquire);
  }
  // True when `bytes` of payload would likely get shared memory now, in one
  // block or a chain (a snapshot: the send itself still falls back inline if
  // the space is gone).
  bool LikelyFits(size_t bytes);

  // Closes the connection; waits for the session thread unless called from
  // it. Idempotent.
  void Shutdown();
  // Closes the connection without waiting: the session thread then calls
  // `on_closed` and ends. For a thread that may hold a lock the handlers
  // take. Idempotent.
  void Close();

 private:
  Session(Handshaken handshaken, FrameHandler on_frame, ClosedHandler on_closed,
          size_t max_block_bytes, absl::Duration stalled_peer_timeout);
  void Run();
  // Close() because this side gave up on the session: `on_closed` is told
  // `why` (the first reason given) instead of what the receive loop saw
  // (its own shutdown, which would read as the peer's).
  void CloseFor(absl::Status why);
  // When `buffer` is exactly one unsent arena slice of this session: takes
  // it (its block is the caller's to send, or to free if that fails).
  std::optional<shm::Block> TakeArenaSlice(const grpc::ByteBuffer& buffer);
  // gRPC dropped the arena slice of `owner` at `data`: frees its block
  // unless it was sent or the arena was reclaimed since. (gRPC may drop a
  // sent slice late, when its block may already carry a newer slice: only
  // the entry `owner` made is freed.)
  void DropArenaSlice(const uint8_t* data, const void* owner);
  static void DestroyArenaSlice(void* owner);
  // Runs `send`, which publishes frames carrying `arena_slices` arena
  // slices, counting them in arena_slices_sent_ before the peer can see
  // them and taking them back if it fails.
  absl::Status CountingArenaSlices(uint64_t arena_slices,
                                   absl::FunctionRef<absl::Status()> send);

  // Allocates one block (or, for kMessage, a chain), lets `fill` write the
  // `size` bytes into it, and sends; inline when there is no shared memory.
  // `fill` takes an absl::Span<const codec::OutChunk>.
  template <typename Fill>
  absl::Status SendFilled(codec::FrameType type, uint64_t stream, size_t size,
                          absl::Time deadline, uint16_t flags, uint64_t aux,
                          Fill fill);

  std::unique_ptr<shm::Endpoint> endpoint_;
  const PeerCredentials peer_;
  const uint64_t peer_stream_window_;
  StreamSlots stream_slots_;
  // What the peer sends wrong is logged, but never faster than one line of a
  // kind per 10 s: a hostile peer could otherwise flood stderr.
  LogRateLimiter protocol_errors_log_{absl::Seconds(10)};
  FrameHandler on_frame_;
  ClosedHandler on_closed_;
  std::atomic<bool> alive_{true};
  std::atomic<int> busy_streams_{0};
  std::atomic<bool> shutdown_{false};
  std::mutex close_reason_mu_;
  absl::Status close_reason_;  // see CloseFor
  // Sends a chain of blocks as one message's frames; false when the chain
  // could not be allocated (nothing was sent then).
  template <typename Fill>
  bool TrySendChained(shm::Descriptor descriptor, size_t size,
                      absl::Time deadline, Fill& fill, absl::Status* status);

  const uint64_t token_;
  const size_t max_block_bytes_;
  const absl::Duration stalled_peer_timeout_;
  const size_t capacity_bytes_;
  // Arena slices gRPC holds, not yet sent, by payload address. The lock
  // also orders them against the reclaim at close: after it no slice is
  // made and no dropped slice frees its (already reclaimed) block.
  std::mutex arena_slices_mu_;
  struct UnsentArenaSlice {
    shm::Block block;
    const void* owner;  // the slice's refcount user data
  };
  std::unordered_map<const uint8_t*, UnsentArenaSlice> unsent_arena_slices_;
  bool arena_reclaimed_ = false;  // guarded by arena_slices_mu_
  std::atomic<size_t> unsent_arena_slice_count_{0};
  std::atomic<uint64_t> arena_slices_sent_{0};
  std::atomic<uint64_t> replies_deferred_{0};
  std::atomic<uint64_t> chained_{0}, inline_arena_full_{0},
      inline_too_large_{0}, blocks_reclaimed_{0};
  shm::Thread thread_;
  struct PostedFrame {
    shm::Descriptor frame;
    std::optional<shm::Block> block;  // its payload's, freed if not sent
    absl::Time deadline;
    StreamSlot slot;               // see PostControl
    bool close_if_unsent = false;  // see PostFrame
  };
  void Post(PostedFrame posted);
  std::mutex posted_mu_;
  std::deque<PostedFrame> posted_;  // waiting for the poster thread
  bool poster_running_ = false;
};

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_SESSION_H_
