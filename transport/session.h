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
// this side's arena. A payload that cannot get a block (arena full, or larger
// than any block) is serialized to the heap and sent inline on the socket, in
// order with the rest of its stream; the next payload tries shared memory
// again, so traffic returns to it as soon as blocks free up.
#ifndef SHMGRPC_TRANSPORT_SESSION_H_
#define SHMGRPC_TRANSPORT_SESSION_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "codec/frame_type.h"
#include "google/protobuf/message_lite.h"
#include "grpcpp/support/byte_buffer.h"
#include "shm/endpoint.h"
#include "transport/handshake.h"

namespace shmgrpc::transport {

// Payloads a session sent inline, by reason.
struct InlineStats {
  uint64_t arena_full = 0;  // a block would fit, but none was free
  uint64_t too_large = 0;   // larger than the largest block
};

class Session {
 public:
  using FrameHandler = std::function<void(const shm::ReceivedMessage&)>;
  using ClosedHandler = std::function<void(const absl::Status&)>;

  // Starts the session thread. The handlers may run until Shutdown() returns.
  // The session lives at least until its thread ends, so the owner must call
  // Shutdown() (or the peer must go away) for it to be freed.
  static std::shared_ptr<Session> Start(Handshaken handshaken,
                                        FrameHandler on_frame,
                                        ClosedHandler on_closed);
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
  // A kWindowUpdate frame (no payload) carrying `credit_aux`.
  absl::Status SendCredit(uint64_t stream, uint64_t credit_aux,
                          absl::Time deadline);
  void Release(const shm::ReceivedMessage& message) {
    endpoint_->Release(message);
  }

  // Largest payload one block of this side's arena can carry.
  size_t max_payload_bytes() const;
  bool alive() const { return alive_.load(std::memory_order_acquire); }
  const PeerCredentials& peer() const { return peer_; }
  shm::EndpointStats Stats() const { return endpoint_->Stats(); }
  InlineStats inline_stats() const;
  // Blocks of this side's arena the peer still held when the session closed
  // (all freed then); 0 while alive.
  uint64_t blocks_reclaimed() const {
    return blocks_reclaimed_.load(std::memory_order_acquire);
  }
  // True when `bytes` of payload would likely get a block now (a snapshot:
  // the send itself still falls back inline if the space is gone).
  bool LikelyFits(size_t bytes);

  // Closes the connection; waits for the session thread unless called from
  // it. Idempotent.
  void Shutdown();

 private:
  Session(Handshaken handshaken, FrameHandler on_frame,
          ClosedHandler on_closed);
  void Run();
  // Allocates, lets `fill` write `size` bytes, and sends.
  template <typename Fill>
  absl::Status SendFilled(codec::FrameType type, uint64_t stream, size_t size,
                          absl::Time deadline, uint16_t flags, Fill fill);

  std::unique_ptr<shm::Endpoint> endpoint_;
  const PeerCredentials peer_;
  FrameHandler on_frame_;
  ClosedHandler on_closed_;
  std::atomic<bool> alive_{true};
  std::atomic<bool> shutdown_{false};
  std::atomic<uint64_t> inline_arena_full_{0}, inline_too_large_{0},
      blocks_reclaimed_{0};
  std::thread thread_;
};

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_SESSION_H_
