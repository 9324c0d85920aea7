// Single-producer single-consumer descriptor rings in shared memory.
//
// Memory model (see docs/ARCHITECTURE.md): the producer's arena holds the
// slots and the tail; the consumer's arena holds the head and its wake state.
// Each side writes only its own memory, and reads the other's read-only
// mapping. Nothing read from the peer is trusted: the consumer copies a slot
// out exactly once and the caller bounds-checks the copy with
// ValidateDescriptor(); a tail or head that contradicts the ring's capacity is
// reported as corruption, never followed.
//
// Doorbell suppression: the consumer publishes an odd wake_state (a new value
// for every sleep) before it blocks and an even one when awake. The producer
// publishes its tail, fences, and reads wake_state; it rings only for an odd
// value it has not rung for yet. Both sides use a full fence between their
// store and their load (Dekker), so a message is never left unannounced to a
// sleeping consumer, and one sleep costs at most one doorbell.
//
// Thread-safety: one thread at a time per RingWriter and per RingReader.
#ifndef SHMGRPC_SHM_RING_H_
#define SHMGRPC_SHM_RING_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace shmgrpc::shm {

// One ring slot. `offset`/`length` locate a payload in the producer's data
// area (for release rings: in the consumer's); the other fields are the
// upper layers' (frame type, stream id, ...), opaque here.
struct Descriptor {
  uint64_t offset;
  uint32_t length;
  uint16_t type;
  uint16_t flags;
  uint64_t tag;
  uint64_t aux;
};
static_assert(sizeof(Descriptor) == 32, "descriptor is one half cache line");

// Offset value for a descriptor that carries no payload (length 0).
inline constexpr uint64_t kNoPayload = ~0ull;
// Every payload offset is a multiple of this (block headers keep it so).
inline constexpr uint64_t kPayloadAlignment = 32;

struct RingProducerState {
  alignas(64) std::atomic<uint64_t> tail;
  char pad[64 - sizeof(std::atomic<uint64_t>)];
  // Descriptor slots[ring_slots] follow.
};

struct RingConsumerState {
  alignas(64) std::atomic<uint64_t> head;
  char pad0[64 - sizeof(std::atomic<uint64_t>)];
  alignas(64) std::atomic<uint64_t> wake_state;  // odd: asleep
  char pad1[64 - sizeof(std::atomic<uint64_t>)];
};

// Bytes a ring's producer part occupies (state + slots).
inline size_t RingBytes(uint32_t ring_slots) {
  return sizeof(RingProducerState) + size_t{ring_slots} * sizeof(Descriptor);
}

// Checks a descriptor copied from the peer against the data area it refers
// to: offset aligned and inside the area, offset + length inside the area
// without overflow. A zero-length descriptor must carry kNoPayload or a valid
// offset. Returns InvalidArgument describing the first violation.
absl::Status ValidateDescriptor(const Descriptor& descriptor,
                                uint64_t data_bytes);

class RingWriter {
 public:
  enum class Result { kOk, kFull, kCorrupt };

  // `producer` lives in this side's writable arena, `consumer` in the peer's
  // read-only mapping.
  RingWriter(RingProducerState* producer, const RingConsumerState* consumer,
             uint32_t ring_slots);

  // Writes one slot without making it visible. kFull when no slot is free;
  // kCorrupt when the peer's head is impossible.
  Result Stage(const Descriptor& descriptor);
  // Makes every staged slot visible to the consumer (release store).
  void Publish();
  // Drops the slots staged since the last Publish().
  void Unstage() { tail_ = published_tail_; }
  // After Publish(): true when the consumer is asleep and has not been rung
  // for this sleep yet. Calling it marks that sleep as rung.
  bool ConsumerNeedsDoorbell();

  uint64_t published() const { return published_tail_; }

 private:
  bool RefreshHead();  // false when the peer's head is impossible.

  RingProducerState* const producer_;
  const RingConsumerState* const consumer_;
  Descriptor* const slots_;
  const uint64_t capacity_;
  uint64_t tail_ = 0;            // staged
  uint64_t published_tail_ = 0;  // visible
  uint64_t cached_head_ = 0;
  uint64_t last_rung_wake_state_ = 0;
};

class RingReader {
 public:
  enum class Result { kOk, kEmpty, kCorrupt };

  // `producer` lives in the peer's read-only mapping, `consumer` in this
  // side's writable arena.
  RingReader(const RingProducerState* producer, RingConsumerState* consumer,
             uint32_t ring_slots);

  // Copies the next descriptor out (once) and frees its slot.
  Result Pop(Descriptor* out);
  // True when the producer has published nothing unread (reloads the tail).
  bool Empty();

  // Wake-state protocol; see the file comment. MarkAsleep() includes the full
  // fence; the caller must re-check Empty() before blocking.
  void MarkAsleep();
  void MarkAwake();

 private:
  const RingProducerState* const producer_;
  RingConsumerState* const consumer_;
  const Descriptor* const slots_;
  const uint64_t capacity_;
  uint64_t head_ = 0;
  uint64_t cached_tail_ = 0;
  uint64_t sleeps_ = 0;
};

}  // namespace shmgrpc::shm

#endif  // SHMGRPC_SHM_RING_H_
