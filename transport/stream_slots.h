// StreamSlots: how many streams a client may have open on one session, the
// shm form of HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113, 5.1.2).
//
// The server advertises its limit in the handshake (WelcomeLimits); each
// side counts the session's open streams against it with a StreamSlots of
// its own. A stream holds a slot from its kCallHeaders until it is closed,
// which each side sees at its own moment:
//   server: once it is about to send the stream's kStatus, or when it reads
//           the client's kCancel for it;
//   client: once it reads the stream's kStatus, or once its kCancel for it
//           is in the ring.
// The server reads a session's frames in ring order, so whenever it reads a
// client's kCallHeaders, every stream it still counts is one that client
// still counted when it sent them: a client that keeps to its count never
// exceeds the server's, and the server refuses a stream over its limit
// (RESOURCE_EXHAUSTED) knowing that only a client ignoring the limit sends
// one. A client with no slot left sends its new call over plain gRPC.
//
// Thread-safe. A slot may outlive its StreamSlots (the count they share
// lives as long as either): a client call moves from session to session
// across retries, and a slot of a session already gone is still released.
#ifndef SHMGRPC_TRANSPORT_STREAM_SLOTS_H_
#define SHMGRPC_TRANSPORT_STREAM_SLOTS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>

namespace shmgrpc::transport {

namespace stream_slots_internal {
struct Count {
  explicit Count(uint64_t limit) : limit(limit) {}
  const uint64_t limit;
  std::atomic<uint64_t> open{0};
};
}  // namespace stream_slots_internal

// One open stream's place in its session's count; returns it when released
// or destroyed. Movable; a default-constructed or moved-from slot holds
// nothing.
class StreamSlot {
 public:
  StreamSlot() = default;
  StreamSlot(StreamSlot&& other) noexcept = default;
  StreamSlot& operator=(StreamSlot&& other) noexcept;
  ~StreamSlot() { Release(); }

  bool held() const { return count_ != nullptr; }
  void Release();
  // Never returns the slot: for a stream whose end the peer may never have
  // seen (its kCancel could not be sent), which the peer may count forever.
  void Abandon() { count_ = nullptr; }

 private:
  friend class StreamSlots;
  explicit StreamSlot(std::shared_ptr<stream_slots_internal::Count> count)
      : count_(std::move(count)) {}
  std::shared_ptr<stream_slots_internal::Count> count_;
};

class StreamSlots {
 public:
  // At most `limit` streams open at once; 0: no limit.
  explicit StreamSlots(uint64_t limit)
      : count_(std::make_shared<stream_slots_internal::Count>(limit)) {}
  StreamSlots(const StreamSlots&) = delete;
  StreamSlots& operator=(const StreamSlots&) = delete;

  // A slot, or one that holds nothing when `limit` streams are open.
  StreamSlot TryOpen();
  uint64_t limit() const { return count_->limit; }
  uint64_t open() const { return count_->open.load(std::memory_order_relaxed); }

 private:
  const std::shared_ptr<stream_slots_internal::Count> count_;
};

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_STREAM_SLOTS_H_
