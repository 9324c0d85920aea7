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
// Thread-safe. A StreamSlots must outlive its slots (the session owns it,
// and every holder of a slot holds the session).
#ifndef SHMGRPC_TRANSPORT_STREAM_SLOTS_H_
#define SHMGRPC_TRANSPORT_STREAM_SLOTS_H_

#include <atomic>
#include <cstdint>

namespace shmgrpc::transport {

class StreamSlots;

// One open stream's place in its session's count; returns it when released
// or destroyed. Movable; a default-constructed or moved-from slot holds
// nothing.
class StreamSlot {
 public:
  StreamSlot() = default;
  StreamSlot(StreamSlot&& other) noexcept : slots_(other.slots_) {
    other.slots_ = nullptr;
  }
  StreamSlot& operator=(StreamSlot&& other) noexcept;
  ~StreamSlot() { Release(); }

  bool held() const { return slots_ != nullptr; }
  void Release();
  // Never returns the slot: for a stream whose end the peer may never have
  // seen (its kCancel could not be sent), which the peer may count forever.
  void Abandon() { slots_ = nullptr; }

 private:
  friend class StreamSlots;
  explicit StreamSlot(StreamSlots* slots) : slots_(slots) {}
  StreamSlots* slots_ = nullptr;
};

class StreamSlots {
 public:
  // At most `limit` streams open at once; 0: no limit.
  explicit StreamSlots(uint64_t limit) : limit_(limit) {}
  StreamSlots(const StreamSlots&) = delete;
  StreamSlots& operator=(const StreamSlots&) = delete;

  // A slot, or one that holds nothing when `limit` streams are open.
  StreamSlot TryOpen();
  uint64_t limit() const { return limit_; }
  uint64_t open() const { return open_.load(std::memory_order_relaxed); }

 private:
  friend class StreamSlot;
  const uint64_t limit_;
  std::atomic<uint64_t> open_{0};
};

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_STREAM_SLOTS_H_
