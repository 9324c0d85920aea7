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
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "codec/frame_type.h"
#include "codec/message_codec.h"
#include "google/protobuf/message_lite.h"
#include "grpcpp/support/byte_buffer.h"
#include "shm/endpoint.h"
#include "transport/handshake.h"
#include "transport/inbound_message.h"
#include "transport/log_rate_limiter.h"

namespace shmgrpc::transport {

// How a session's payloads left when one block was not enough.
struct SendPathStats {
  uint64_t chained = 0;            // messages split over several blocks
  uint64_t inline_arena_full = 0;  // inline: not enough free shared memory
  uint64_t inline_too_large = 0;   // inline: larger than the whole arena
  SendPathStats& operator+=(const SendPathStats& other) {
    chained += other.chained;
    inline_arena_full += other.inline_arena_full;
    inline_too_large += other.inline_too_large;
    return *this;
  }
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
  // larger messages are chained).
  static std::shared_ptr<Session> Create(Handshaken handshaken,
                                         FrameHandler on_frame,
                                         ClosedHandler on_closed,
                                         size_t max_block_bytes = 0);
  // Starts the session thread, once. The handlers may run until Shutdown()
  // returns. Must happen before any Shutdown() from another thread. The
  // session then lives at least until its thread ends, so the owner must
  // call Shutdown() (or the peer must go away) for it to be freed.
  void Start();
  ~Session();

  // `size` is codec::SerializedSize(message), computed by the caller (once)
  // on the unchanged message.
  absl::Status SendMessage(uint64_t stream,
                           const google::protobuf::MessageLite& message,
                           size_t size, absl::Time deadline);
  absl::Status SendByteBuffer(uint64_t stream, const grpc::ByteBuffer& buffer,
                              absl::Time deadline);
  // A frame whose payload is `bytes` (copied into a block), or none if empty.
  absl::Status SendFrame(codec::FrameType type, uint64_t stream,
                         absl::string_view bytes, absl::Time deadline,
                         uint16_t flags = 0);
  // A frame without payload (kWindowUpdate, kCancel) carrying `aux`.
  absl::Status SendControl(codec::FrameType type, uint64_t stream, uint64_t aux,
                           absl::Time deadline);
  // The same from a thread that must never wait (a session thread: see
  // ARCHITECTURE, "no reader waits on a writer"): tried at once; if the ring
  // or the send lock is busy, queued — in order, behind anything queued
  // before — for a short-lived thread that waits for room until `deadline`.
  // Best effort: a frame for a closed session is dropped.
  void PostControl(codec::FrameType type, uint64_t stream, uint64_t aux,
                   absl::Time deadline);
  void Release(const shm::ReceivedMessage& message) {
    endpoint_->Release(message);
  }
  void Release(const InboundMessage& message) {
    for (const shm::ReceivedMessage& frame : message.frames) {
      endpoint_->Release(frame);
    }
  }

  // Streams under way whose frames the peer is working on (the owners count
  // their unary calls in flight; an open stream may idle for hours, so
  // streams are not counted). The session thread tells its endpoint: while
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

  bool alive() const { return alive_.load(std::memory_order_acquire); }
  const PeerCredentials& peer() const { return peer_; }
  shm::EndpointStats Stats() const { return endpoint_->Stats(); }
  SendPathStats send_path_stats() const;
  // Largest payload this side's arena could ever hold (one block spanning
  // the whole data area); anything larger can only travel inline.
  size_t capacity_bytes() const { return capacity_bytes_; }
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
          size_t max_block_bytes);
  void Run();
  // Allocates one block (or, for kMessage, a chain), lets `fill` write the
  // `size` bytes into it, and sends; inline when there is no shared memory.
  // `fill` takes an absl::Span<const codec::OutChunk>.
  template <typename Fill>
  absl::Status SendFilled(codec::FrameType type, uint64_t stream, size_t size,
                          absl::Time deadline, uint16_t flags, Fill fill);

  std::unique_ptr<shm::Endpoint> endpoint_;
  const PeerCredentials peer_;
  // What the peer sends wrong is logged, but never faster than one line of a
  // kind per 10 s: a hostile peer could otherwise flood stderr.
  LogRateLimiter protocol_errors_log_{absl::Seconds(10)};
  FrameHandler on_frame_;
  ClosedHandler on_closed_;
  std::atomic<bool> alive_{true};
  std::atomic<int> busy_streams_{0};
  std::atomic<bool> shutdown_{false};
  // Sends a chain of blocks as one message's frames; false when the chain
  // could not be allocated (nothing was sent then).
  template <typename Fill>
  bool TrySendChained(shm::Descriptor descriptor, size_t size,
                      absl::Time deadline, Fill& fill, absl::Status* status);

  const size_t max_block_bytes_;
  const size_t capacity_bytes_;
  std::atomic<uint64_t> chained_{0}, inline_arena_full_{0},
      inline_too_large_{0}, blocks_reclaimed_{0};
  std::thread thread_;
  struct PostedControl {
    shm::Descriptor frame;
    absl::Time deadline;
  };
  std::mutex posted_mu_;
  std::deque<PostedControl> posted_;  // waiting for the poster thread
  bool poster_running_ = false;
};

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_SESSION_H_
