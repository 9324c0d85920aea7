// Endpoint: one side of a shared-memory connection.
//
// An endpoint owns this side's segment (arena, allocator, the rings it
// produces) and a read-only mapping of the peer's segment, plus the connected
// unix socket (a SideChannel) that carries doorbells and inline payloads and
// shows when the peer is gone.
//
//   sender  : Allocate() a block, write the payload in place, Send() a
//             descriptor naming it. The block now belongs to the peer until
//             the peer releases it.
//   fallback: SendInline() when no block can be had (arena full, or the
//             payload is larger than any block): the descriptor keeps its
//             place in the ring and the bytes travel on the socket, so the
//             receiver sees one ordered stream either way.
//   receiver: Receive() a message, read the payload in place (read-only,
//             straight from the peer's arena), then Release() it; the release
//             travels back on this side's release ring and the owner frees
//             the block on its next Allocate().
//
// Threading: Allocate, FreeUnsent, Send, SendInline, Release, Stats and
// ReclaimAll are thread-safe (sends and releases each serialize on their own
// small lock).
// Receive is for one thread at a time.
// Errors: a hostile descriptor is InvalidArgument for that message only (the
// ring keeps working); a ring whose indices are impossible is DataLoss; a gone
// peer is Unavailable; a full ring is backpressure until `deadline`, then
// DeadlineExceeded; a broken inline record closes the connection
// (Unavailable / DataLoss). Nothing is dropped silently.
#ifndef SHMGRPC_SHM_ENDPOINT_H_
#define SHMGRPC_SHM_ENDPOINT_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "shm/arena.h"
#include "shm/block_allocator.h"
#include "shm/ring.h"
#include "shm/segment_layout.h"
#include "shm/side_channel.h"
#include "shm/stats.h"
#include "shm/wait_options.h"

namespace shmgrpc::shm {

// Set in Descriptor::flags by the shm layer for a payload that travels on
// the socket; the upper layers' flags must leave this bit alone.
inline constexpr uint16_t kInlinePayloadFlag = 0x8000;

// A message as received: a validated descriptor and, unless it carries no
// payload, a read-only view of `descriptor.length` bytes, in the peer's arena
// or (inline messages) in `inline_payload`, which copies keep alive.
struct ReceivedMessage {
  Descriptor descriptor;
  const uint8_t* data = nullptr;
  std::shared_ptr<const std::string> inline_payload;
};

class Endpoint {
 public:
  // Takes ownership of both arenas and of `sock`. `local_layout` and
  // `peer_layout` must be the layouts the arenas were created/mapped with.
  // `inline_limits`: what inline payloads may take (side_channel.h).
  Endpoint(std::unique_ptr<Arena> local, const SegmentLayout& local_layout,
           std::unique_ptr<Arena> peer, const SegmentLayout& peer_layout,
           int sock, const WaitOptions& wait,
           const InlineLimits& inline_limits = InlineLimits());
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;
  ~Endpoint();

  // A block in this side's arena, after taking back what the peer released.
  absl::StatusOr<Block> Allocate(size_t payload_bytes, uint64_t stream_id);
  // Bytes of this side's arena not held by any block, after taking back
  // what the peer released (fragmentation may still refuse a large block).
  uint64_t FreeBytes();
  // Returns a block that was allocated but never sent.
  absl::Status FreeUnsent(const Block& block);

  // Publishes `descriptor` (its offset from a Block of this endpoint, or
  // kNoPayload with length 0) and rings the doorbell only if the peer sleeps.
  absl::Status Send(const Descriptor& descriptor, absl::Time deadline);
  // Send without ever waiting: ResourceExhausted when another sender holds
  // the send lock (it may be waiting for ring space) or the ring is full.
  // For threads that must not block (a session's reader).
  absl::Status TrySend(const Descriptor& descriptor);
  // Publishes all of `descriptors`, in order, or none, never waiting for
  // the peer: ResourceExhausted when the ring lacks room for all of them,
  // or another sender keeps the send lock past a few yields (it may be
  // waiting for room). At most one doorbell. For threads that must not
  // block on the peer, sending several frames that belong together.
  absl::Status TrySendAll(absl::Span<const Descriptor> descriptors);
  // Send that waits for room without holding the send lock (it polls,
  // backing off from 1 us to 1 ms), so other senders are not held up: for
  // a frame sent in the background with a long deadline. Unavailable once
  // the peer has gone (or this side closed the connection).
  absl::Status SendYielding(const Descriptor& descriptor, absl::Time deadline);
  // Publishes `descriptor` (offset/length/flags are set here) with `bytes`
  // travelling on the socket instead of shared memory. Waits until
  // `deadline` for room among the queued records (InlineLimits::
  // max_queued_bytes) and for a ring slot, then queues the bytes for the
  // socket's writer thread and returns: once the descriptor is out, the
  // record is written in full or the connection is closed.
  absl::Status SendInline(Descriptor descriptor, std::string bytes,
                          absl::Time deadline);

  // Waits per the wait strategy for the next message until `deadline`.
  // `busy_streams`: how many streams the caller knows to be under way (see
  // WaitOptions::max_busy_streams_for_spin); above that limit a notify
  // endpoint stops spinning, and sleeps on the doorbell, as soon as its
  // yields show other threads taking the cores.
  absl::StatusOr<ReceivedMessage> Receive(absl::Time deadline,
                                          int busy_streams = 0);
  // Gives a received payload back to its owner. Never blocks: when the
  // release ring is full the release is queued and retried.
  void Release(const ReceivedMessage& message);

  // After the peer is gone: frees every block of this side's arena (the
  // peer's unreleased ones included). Returns the number of blocks freed.
  uint64_t ReclaimAll();

  // Takes back what the peer released first, so the arena counts are
  // current even when this side has been idle.
  EndpointStats Stats();
  // Largest payload one block of this side's arena can carry.
  size_t max_payload_bytes() const { return allocator_.max_payload_bytes(); }
  // Largest inline payload accepted either way.
  size_t max_inline_bytes() const { return max_inline_bytes_; }
  const WaitOptions& wait_options() const { return wait_; }
  int socket() const { return sock_; }

 private:
  enum class PopResult { kMessage, kEmpty, kInvalid, kCorrupt };
  PopResult TryPop(ReceivedMessage* out, absl::Status* error);
  // One attempt (send_mu_ held): false when the ring is full; otherwise the
  // descriptor is published (doorbell rung if the peer sleeps) or the ring
  // is corrupt, and `*status` says which.
  bool TryPublishLocked(const Descriptor& descriptor, absl::Status* status);
  // Publishes what was staged (`messages` descriptors, `bytes` of payload),
  // counts it and rings the doorbell if the peer sleeps.
  absl::Status PublishStagedLocked(uint64_t messages, uint64_t bytes);
  // Attempts until published, waiting out a full ring until `deadline`.
  absl::Status PublishLocked(const Descriptor& descriptor, absl::Time deadline);
  // Takes send_mu_ into `lock`, waiting at most until `deadline`
  // (DeadlineExceeded then).
  absl::Status LockSendUntil(std::unique_lock<std::timed_mutex>& lock,
                             absl::Time deadline);
  void DrainReleases();               // any thread; one drains at a time
  void RetryPendingReleases();        // takes release_mu_ only if needed
  void FlushPendingReleasesLocked();  // release_mu_ held
  void AdaptSpin(int64_t waited_ns);
  int64_t SizeSpinNanos(uint32_t message_bytes) const;
  // Extends the next spins for a received message of `message_bytes`,
  // unless extensions for messages that large missed lately.
  void ArmSizeSpin(uint32_t message_bytes);
  // After a sleep that followed a spin extended by `extension_ns` for a
  // message of `message_bytes`: counts a miss if the next message came
  // only a little too late for it (repeated misses stop such extensions
  // for a while).
  void NoteSizeSpinMiss(int64_t extension_ns, uint32_t message_bytes,
                        int64_t waited_ns);

  std::unique_ptr<Arena> local_;
  std::unique_ptr<Arena> peer_;
  const int sock_;
  const WaitOptions wait_;
  const size_t max_inline_bytes_;
  const uint64_t peer_data_bytes_;
  const uint8_t* const peer_data_;
  BlockAllocator allocator_;
  SideChannel side_;  // sends under send_mu_, reads on the receiver thread

  // Timed: a sender waits for it at most until its own deadline (its holder
  // may be waiting for room in a full ring, see LockSendUntil).
  std::timed_mutex send_mu_;
  RingWriter data_out_;  // guarded by send_mu_
  RingReader data_in_;   // receiver thread
  std::mutex release_mu_;
  RingWriter release_out_;                         // guarded by release_mu_
  std::deque<Descriptor> pending_releases_;        // guarded by release_mu_
  std::atomic<bool> has_pending_releases_{false};  // !pending_releases_.empty()
  RingReader release_in_;                          // whoever holds draining_
  std::atomic_flag draining_ = ATOMIC_FLAG_INIT;
  int64_t spin_budget_ns_;               // receiver thread
  const int max_busy_streams_for_spin_;  // resolved (never 0)
  // Until then busy waits do not spin (receiver thread; see Receive).
  int64_t contended_until_ns_ = 0;
  const int64_t spin_per_mib_ns_;  // wait_.spin_per_mib, converted once
  // Spin owed to the large messages received since the last sleep
  // (receiver thread; see WaitOptions::spin_per_mib): the extension, the
  // message size that set it, extensions missed in a row, and the size and
  // time of the last miss.
  int64_t size_spin_ns_ = 0;
  uint32_t size_spin_bytes_ = 0;
  int size_spin_misses_ = 0;
  uint32_t size_spin_missed_bytes_ = std::numeric_limits<uint32_t>::max();
  int64_t size_spin_missed_at_ns_ = 0;

  // Single-writer counters (each bumped by one thread, read by Stats()).
  struct Counter {
    std::atomic<uint64_t> value{0};
    void Add(uint64_t n) {
      value.store(value.load(std::memory_order_relaxed) + n,
                  std::memory_order_relaxed);
    }
    uint64_t Get() const { return value.load(std::memory_order_relaxed); }
  };
  Counter messages_sent_, bytes_sent_, doorbells_sent_, doorbells_suppressed_,
      ring_full_waits_, inline_sent_, inline_bytes_sent_;  // under send_mu_
  Counter releases_sent_;                                  // under release_mu_
  Counter messages_received_, bytes_received_, wakeups_, invalid_descriptors_,
      inline_received_;                         // receiver thread
  std::atomic<uint64_t> releases_received_{0};  // any draining thread
};

}  // namespace shmgrpc::shm

#endif  // SHMGRPC_SHM_ENDPOINT_H_
