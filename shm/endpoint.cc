#include "shm/endpoint.h"

#include <sched.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <limits>

#include "absl/strings/str_cat.h"
#include "shm/deadline.h"

namespace shmgrpc::shm {
namespace {

// CPUs this process may run on (its affinity mask), at least 1.
int UsableCpus() {
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  if (sched_getaffinity(0, sizeof(cpus), &cpus) != 0) return 1;
  return std::max(1, CPU_COUNT(&cpus));
}

int64_t MonotonicNanos() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

// Deadline as a point on the monotonic clock, as MonotonicNanos() counts
// (int64 max for none; steady_clock is CLOCK_MONOTONIC).
int64_t DeadlineNanos(absl::Time deadline) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             SteadyDeadline(deadline).time_since_epoch())
      .count();
}

inline void CpuRelax() { __builtin_ia32_pause(); }

template <typename T>
T* At(const Arena& arena, size_t offset) {
  return reinterpret_cast<T*>(const_cast<uint8_t*>(arena.base()) + offset);
}

}  // namespace

Endpoint::Endpoint(std::unique_ptr<Arena> local,
                   const SegmentLayout& local_layout,
                   std::unique_ptr<Arena> peer,
                   const SegmentLayout& peer_layout, int sock,
                   const WaitOptions& wait, const InlineLimits& inline_limits)
    : local_(std::move(local)),
      peer_(std::move(peer)),
      sock_(sock),
      wait_(wait),
      max_inline_bytes_(inline_limits.max_record_bytes),
      peer_data_bytes_(peer_layout.data_bytes),
      peer_data_(peer_->base() + peer_layout.data_offset),
      allocator_(local_->mutable_base() + local_layout.data_offset,
                 local_layout.data_bytes),
      side_(sock, inline_limits),
      data_out_(
          At<RingProducerState>(*local_, local_layout.data_ring_offset),
          At<const RingConsumerState>(*peer_, peer_layout.data_consumer_offset),
          local_layout.ring_slots),
      data_in_(
          At<const RingProducerState>(*peer_, peer_layout.data_ring_offset),
          At<RingConsumerState>(*local_, local_layout.data_consumer_offset),
          peer_layout.ring_slots),
      release_out_(
          At<RingProducerState>(*local_, local_layout.release_ring_offset),
          At<const RingConsumerState>(*peer_,
                                      peer_layout.release_consumer_offset),
          local_layout.ring_slots),
      release_in_(
          At<const RingProducerState>(*peer_, peer_layout.release_ring_offset),
          At<RingConsumerState>(*local_, local_layout.release_consumer_offset),
          peer_layout.ring_slots),
      spin_budget_ns_(absl::ToInt64Nanoseconds(wait.max_spin)),
      max_busy_streams_for_spin_(wait.max_busy_streams_for_spin > 0
                                     ? wait.max_busy_streams_for_spin
                                     : UsableCpus()),
      spin_per_mib_ns_(absl::ToInt64Nanoseconds(wait.spin_per_mib)) {}

Endpoint::~Endpoint() {
  // Unblock and stop the side channel's writer before the fd goes away.
  ::shutdown(sock_, SHUT_RDWR);
  side_.StopWriter();
  close(sock_);
}

absl::StatusOr<Block> Endpoint::Allocate(size_t payload_bytes,
                                         uint64_t stream_id) {
  DrainReleases();
  return allocator_.Allocate(payload_bytes, stream_id);
}

uint64_t Endpoint::FreeBytes() {
  DrainReleases();
  const ArenaStats arena = allocator_.Stats();
  return arena.capacity_bytes - arena.bytes_in_use;
}

absl::Status Endpoint::FreeUnsent(const Block& block) {
  return allocator_.Free(block.offset);
}

void Endpoint::DrainReleases() {
  if (draining_.test_and_set(std::memory_order_acquire)) return;
  Descriptor release;
  uint64_t drained = 0;
  while (release_in_.Pop(&release) == RingReader::Result::kOk) {
    // A bad offset is counted by the allocator as an invalid free and
    // otherwise ignored: it cannot touch any block it does not name.
    allocator_.Free(release.offset).IgnoreError();
    ++drained;
  }
  if (drained > 0) {
    releases_received_.fetch_add(drained, std::memory_order_relaxed);
  }
  draining_.clear(std::memory_order_release);
}

absl::Status Endpoint::LockSendUntil(std::unique_lock<std::timed_mutex>& lock,
                                     absl::Time deadline) {
  if (lock.try_lock()) return absl::OkStatus();  // the usual case: no clock
  // Bounded: the holder may be waiting for room in a full ring (its own
  // deadline may be far), and a sender's deadline must hold regardless.
  const auto until = SystemWaitDeadline(deadline);
  if (!until.has_value()) {
    lock.lock();
    return absl::OkStatus();
  }
  if (!lock.try_lock_until(*until)) {
    return absl::DeadlineExceededError(
        "another sender waited for room in the full ring past the deadline");
  }
  return absl::OkStatus();
}

absl::Status Endpoint::Send(const Descriptor& descriptor, absl::Time deadline) {
  std::unique_lock<std::timed_mutex> lock(send_mu_, std::defer_lock);
  if (absl::Status locked = LockSendUntil(lock, deadline); !locked.ok()) {
    return locked;
  }
  return PublishLocked(descriptor, deadline);
}

absl::Status Endpoint::SendYielding(const Descriptor& descriptor,
                                    absl::Time deadline) {
  const SteadyTime until = SteadyDeadline(deadline);
  absl::Duration backoff = absl::Microseconds(1);
  for (;;) {
    const absl::Status sent = TrySend(descriptor);
    if (sent.code() != absl::StatusCode::kResourceExhausted) return sent;
    if (absl::Status peer = side_.CheckPeer(); !peer.ok()) return peer;
    if (std::chrono::steady_clock::now() >= until) {
      return absl::DeadlineExceededError(
          "shared-memory ring stayed full until the deadline");
    }
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Milliseconds(1));
  }
}

absl::Status Endpoint::TrySend(const Descriptor& descriptor) {
  std::unique_lock<std::timed_mutex> lock(send_mu_, std::try_to_lock);
  if (!lock.owns_lock()) {
    return absl::ResourceExhaustedError("another sender holds the ring");
  }
  absl::Status sent;
  if (TryPublishLocked(descriptor, &sent)) return sent;
  return absl::ResourceExhaustedError("ring full");
}

absl::Status Endpoint::SendInline(Descriptor descriptor, std::string bytes,
                                  absl::Time deadline) {
  const size_t len = bytes.size();
  if (len > max_inline_bytes_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("message of ", len, " bytes exceeds the inline limit of ",
                     max_inline_bytes_));
  }
  descriptor.offset = kNoPayload;
  descriptor.length = static_cast<uint32_t>(len);
  descriptor.flags |= kInlinePayloadFlag;
  std::unique_lock<std::timed_mutex> lock(send_mu_, std::defer_lock);
  if (absl::Status locked = LockSendUntil(lock, deadline); !locked.ok()) {
    return locked;
  }
  // Before the descriptor: once it is out, its record must follow.
  if (absl::Status room = side_.WaitForRoom(len, deadline); !room.ok()) {
    return room;
  }
  if (absl::Status published = PublishLocked(descriptor, deadline);
      !published.ok()) {
    return published;
  }
  // Queued under send_mu_, so records follow their descriptors' order.
  if (absl::Status queued = side_.QueueRecord(std::move(bytes)); !queued.ok()) {
    // The descriptor is out without its record: the stream is broken.
    ::shutdown(sock_, SHUT_RDWR);
    return queued;
  }
  inline_sent_.Add(1);
  inline_bytes_sent_.Add(len);
  return absl::OkStatus();
}

bool Endpoint::TryPublishLocked(const Descriptor& descriptor,
                                absl::Status* status) {
  switch (data_out_.Stage(descriptor)) {
    case RingWriter::Result::kOk:
      *status = PublishStagedLocked(1, descriptor.length);
      return true;
    case RingWriter::Result::kCorrupt:
      *status = absl::DataLossError("peer's ring head is impossible");
      return true;
    case RingWriter::Result::kFull:
      return false;
  }
  return false;
}

absl::Status Endpoint::PublishStagedLocked(uint64_t messages, uint64_t bytes) {
  data_out_.Publish();
  messages_sent_.Add(messages);
  bytes_sent_.Add(bytes);
  if (data_out_.ConsumerNeedsDoorbell()) {
    doorbells_sent_.Add(1);
    return side_.Ring();
  }
  doorbells_suppressed_.Add(1);
  return absl::OkStatus();
}

absl::Status Endpoint::TrySendAll(absl::Span<const Descriptor> descriptors) {
  // A few yields for a sender that holds the lock only to publish (the
  // usual case under load), not for one waiting for room.
  constexpr int kLockAttempts = 8;
  std::unique_lock<std::timed_mutex> lock(send_mu_, std::try_to_lock);
  for (int i = 0; !lock.owns_lock() && i < kLockAttempts; ++i) {
    sched_yield();
    lock.try_lock();
  }
  if (!lock.owns_lock()) {
    return absl::ResourceExhaustedError("another sender holds the ring");
  }
  uint64_t bytes = 0;
  for (const Descriptor& descriptor : descriptors) {
    switch (data_out_.Stage(descriptor)) {
      case RingWriter::Result::kOk:
        bytes += descriptor.length;
        continue;
      case RingWriter::Result::kCorrupt:
        data_out_.Unstage();
        return absl::DataLossError("peer's ring head is impossible");
      case RingWriter::Result::kFull:
        data_out_.Unstage();
        return absl::ResourceExhaustedError("ring full");
    }
  }
  return PublishStagedLocked(descriptors.size(), bytes);
}

absl::Status Endpoint::PublishLocked(const Descriptor& descriptor,
                                     absl::Time deadline) {
  int64_t deadline_ns = 0;  // computed on the first full ring only
  int64_t backoff_us = 1;
  for (;;) {
    absl::Status published;
    if (TryPublishLocked(descriptor, &published)) return published;
    // Backpressure: the consumer frees slots without signalling, so back off
    // exponentially (1..100 us), bounded by the deadline and by the peer.
    if (deadline_ns == 0) {
      ring_full_waits_.Add(1);
      deadline_ns = DeadlineNanos(deadline);
    }
    if (absl::Status peer = side_.CheckPeer(); !peer.ok()) return peer;
    if (MonotonicNanos() >= deadline_ns) {
      return absl::DeadlineExceededError(
          "shared-memory ring stayed full until the deadline");
    }
    const timespec nap{0, static_cast<long>(backoff_us * 1000)};
    nanosleep(&nap, nullptr);
    backoff_us = std::min<int64_t>(backoff_us * 2, 100);
  }
}

Endpoint::PopResult Endpoint::TryPop(ReceivedMessage* out,
                                     absl::Status* error) {
  switch (data_in_.Pop(&out->descriptor)) {
    case RingReader::Result::kEmpty:
      return PopResult::kEmpty;
    case RingReader::Result::kCorrupt:
      *error = absl::DataLossError("peer's ring tail is impossible");
      return PopResult::kCorrupt;
    case RingReader::Result::kOk:
      break;
  }
  if ((out->descriptor.flags & kInlinePayloadFlag) != 0) {
    // Its bytes are on the socket. Any inconsistency here leaves the socket
    // stream out of step with the ring, so it ends the connection.
    if (out->descriptor.offset != kNoPayload ||
        out->descriptor.length > max_inline_bytes_) {
      invalid_descriptors_.Add(1);
      *error = absl::DataLossError(
          absl::StrCat("inline descriptor with offset ", out->descriptor.offset,
                       " and length ", out->descriptor.length));
      return PopResult::kCorrupt;
    }
    absl::StatusOr<std::shared_ptr<const std::string>> record =
        side_.TakeRecord(out->descriptor.length);
    if (!record.ok()) {
      *error = record.status();
      return PopResult::kCorrupt;
    }
    out->inline_payload = *std::move(record);
    out->data = reinterpret_cast<const uint8_t*>(out->inline_payload->data());
    messages_received_.Add(1);
    bytes_received_.Add(out->descriptor.length);
    inline_received_.Add(1);
    return PopResult::kMessage;
  }
  if (absl::Status valid =
          ValidateDescriptor(out->descriptor, peer_data_bytes_);
      !valid.ok()) {
    invalid_descriptors_.Add(1);
    *error = std::move(valid);
    return PopResult::kInvalid;
  }
  out->data = out->descriptor.offset == kNoPayload
                  ? nullptr
                  : peer_data_ + out->descriptor.offset;
  messages_received_.Add(1);
  bytes_received_.Add(out->descriptor.length);
  return PopResult::kMessage;
}

int64_t Endpoint::SizeSpinNanos(uint32_t message_bytes) const {
  constexpr int64_t kMaxSizeSpinNs = 2'000'000;
  return std::min(kMaxSizeSpinNs,
                  static_cast<int64_t>(static_cast<double>(spin_per_mib_ns_) *
                                       message_bytes / (1 << 20)));
}

void Endpoint::ArmSizeSpin(uint32_t message_bytes) {
  // Extensions stop after this many misses in a row (one is noise), and
  // are tried again after a while (the peer may have become faster).
  constexpr int kMissesToStop = 2;
  constexpr int64_t kRetryAfterNs = 100'000'000;
  const int64_t extension_ns = SizeSpinNanos(message_bytes);
  if (extension_ns <= size_spin_ns_) return;
  if (size_spin_misses_ >= kMissesToStop &&
      message_bytes >= size_spin_missed_bytes_ &&
      MonotonicNanos() - size_spin_missed_at_ns_ < kRetryAfterNs) {
    return;
  }
  size_spin_ns_ = extension_ns;
  size_spin_bytes_ = message_bytes;
}

void Endpoint::NoteSizeSpinMiss(int64_t extension_ns, uint32_t message_bytes,
                                int64_t waited_ns) {
  // A message a few extensions late means exchanges of messages that large
  // take longer than their extension: spinning for them only burns CPU
  // (4 MiB round trips here). One much later means the link went idle
  // after a burst, which says nothing about the next burst.
  constexpr int64_t kSlowExchangeFactor = 4;
  if (extension_ns == 0 || waited_ns > kSlowExchangeFactor * extension_ns) {
    return;
  }
  size_spin_misses_ = std::min(size_spin_misses_ + 1, 8);
  size_spin_missed_bytes_ = message_bytes;
  size_spin_missed_at_ns_ = MonotonicNanos();
}

void Endpoint::AdaptSpin(int64_t waited_ns) {
  // A wait of a few spin budgets is a near miss: the peer answered quickly
  // but paid a wake-up because this side (and so, soon, the peer) slept.
  // Spinning fully again lets both sides fall back into the no-syscall
  // regime; halving on near misses would lock both into sleeping. Only waits
  // well past that (a slow handler, an idle link) shrink the budget.
  constexpr int64_t kNearMissFactor = 4;
  const int64_t max_ns = absl::ToInt64Nanoseconds(wait_.max_spin);
  const int64_t min_ns = absl::ToInt64Nanoseconds(wait_.min_spin);
  spin_budget_ns_ = waited_ns <= kNearMissFactor * max_ns
                        ? max_ns
                        : std::max(min_ns, spin_budget_ns_ / 2);
}

absl::StatusOr<ReceivedMessage> Endpoint::Receive(absl::Time deadline,
                                                  int busy_streams) {
  RetryPendingReleases();
  ReceivedMessage message;
  absl::Status error;
  auto done = [&](PopResult result) -> absl::StatusOr<ReceivedMessage> {
    if (result != PopResult::kMessage) return error;
    ArmSizeSpin(message.descriptor.length);
    return message;
  };
  if (PopResult r = TryPop(&message, &error); r != PopResult::kEmpty) {
    return done(r);
  }
  const int64_t start_ns = MonotonicNanos();
  const int64_t deadline_ns = DeadlineNanos(deadline);
  const int64_t liveness_ns = absl::ToInt64Nanoseconds(wait_.liveness_check);
  // Busy (notify only): more streams under way than the limit. Their threads
  // usually keep the cores busy, and then a spin only takes turns from them: it
  // stops once its yields show that other threads ran for more than half
  // of it (yields that take longer than a bare syscall), and busy waits
  // skip the spin for the next kContendedForNs, so that under load the
  // probe is rare. Streams that wait rather than work (long polls) leave
  // the cores idle, and the spin goes on. Budgets are not adapted from
  // busy waits.
  const bool busy = wait_.strategy == WaitStrategy::kNotify &&
                    busy_streams > max_busy_streams_for_spin_;
  constexpr int64_t kYieldRanOthersNs = 5000;
  constexpr int64_t kContendedForNs = 1000000;
  int64_t given_away_ns = 0;
  const bool skip_spin = busy && start_ns < contended_until_ns_;
  const int64_t spin_ns =
      wait_.strategy == WaitStrategy::kNotify
          ? (skip_spin ? 0 : std::max(spin_budget_ns_, size_spin_ns_))
      : wait_.strategy == WaitStrategy::kPoll
          ? std::numeric_limits<int64_t>::max()
          : 0;
  // Spin phase (notify: adaptive budget; poll: until the deadline). The
  // first pause_spin only pauses; after that every check yields the core,
  // so a spinning consumer never keeps the thread that will produce the
  // message (or anything else runnable) off the CPU.
  const int64_t pause_ns = absl::ToInt64Nanoseconds(wait_.pause_spin);
  int64_t now_ns = start_ns;
  int64_t next_liveness_ns = start_ns + liveness_ns;
  bool yielding = pause_ns <= 0;
  for (uint32_t i = 1; now_ns - start_ns < spin_ns; ++i) {
    if (PopResult r = TryPop(&message, &error); r != PopResult::kEmpty) {
      // Caught only thanks to a spin extended for large messages.
      if (now_ns - start_ns > spin_budget_ns_) size_spin_misses_ = 0;
      return done(r);
    }
    const bool yielded = yielding;
    if (yielding) {
      sched_yield();
    } else {
      CpuRelax();
      if ((i & 63) != 0) continue;
    }
    const int64_t before_ns = now_ns;
    now_ns = MonotonicNanos();
    if (busy && yielded) {
      if (now_ns - before_ns > kYieldRanOthersNs) {
        given_away_ns += now_ns - before_ns;
      }
      if (2 * given_away_ns > now_ns - start_ns) {  // the cores are taken
        contended_until_ns_ = now_ns + kContendedForNs;
        break;
      }
    }
    yielding = now_ns - start_ns >= pause_ns;
    if (now_ns >= deadline_ns) {
      return absl::DeadlineExceededError("no message before the deadline");
    }
    if (now_ns >= next_liveness_ns) {
      next_liveness_ns = now_ns + liveness_ns;
      DrainReleases();
      if (absl::Status peer = side_.CheckPeer(); !peer.ok()) {
        if (PopResult r = TryPop(&message, &error); r != PopResult::kEmpty) {
          return done(r);
        }
        return peer;
      }
    }
  }
  // Sleep phase (notify: doorbell; periodic: fixed period). A spin extended
  // for large messages is over; whether it was too short is judged when the
  // next message comes (NoteSizeSpinMiss).
  const int64_t missed_extension_ns =
      size_spin_ns_ > spin_budget_ns_ ? size_spin_ns_ : 0;
  const uint32_t missed_extension_bytes = size_spin_bytes_;
  size_spin_ns_ = 0;
  size_spin_bytes_ = 0;
  for (;;) {
    DrainReleases();
    now_ns = MonotonicNanos();
    if (now_ns >= deadline_ns) {
      return absl::DeadlineExceededError("no message before the deadline");
    }
    absl::Duration nap = absl::Nanoseconds(deadline_ns - now_ns);
    const bool notify = wait_.strategy == WaitStrategy::kNotify;
    if (notify) {
      data_in_.MarkAsleep();
      if (!data_in_.Empty()) {
        data_in_.MarkAwake();
      } else {
        absl::Status waited = side_.Wait(nap);
        data_in_.MarkAwake();
        wakeups_.Add(1);
        if (!waited.ok()) {
          if (PopResult r = TryPop(&message, &error); r != PopResult::kEmpty) {
            return done(r);
          }
          return waited;
        }
      }
    } else {
      nap = std::min(nap, wait_.period);
      // Nothing rings in periodic mode, so this sleeps the period unless the
      // peer hangs up.
      absl::Status waited = side_.Wait(nap);
      wakeups_.Add(1);
      if (!waited.ok()) {
        if (PopResult r = TryPop(&message, &error); r != PopResult::kEmpty) {
          return done(r);
        }
        return waited;
      }
    }
    if (PopResult r = TryPop(&message, &error); r != PopResult::kEmpty) {
      if (notify && !busy) {
        const int64_t waited_ns = MonotonicNanos() - start_ns;
        AdaptSpin(waited_ns);
        NoteSizeSpinMiss(missed_extension_ns, missed_extension_bytes,
                         waited_ns);
      }
      return done(r);
    }
  }
}

void Endpoint::RetryPendingReleases() {
  // Checked without the lock: Receive runs once per message, and releases
  // only queue up when the release ring was full.
  if (!has_pending_releases_.load(std::memory_order_acquire)) return;
  std::lock_guard<std::mutex> lock(release_mu_);
  FlushPendingReleasesLocked();
}

void Endpoint::FlushPendingReleasesLocked() {
  while (!pending_releases_.empty() &&
         release_out_.Stage(pending_releases_.front()) ==
             RingWriter::Result::kOk) {
    pending_releases_.pop_front();
  }
  release_out_.Publish();
  has_pending_releases_.store(!pending_releases_.empty(),
                              std::memory_order_release);
}

void Endpoint::Release(const ReceivedMessage& message) {
  if (message.descriptor.offset == kNoPayload) return;
  Descriptor release{};
  release.offset = message.descriptor.offset;
  release.length = message.descriptor.length;
  std::lock_guard<std::mutex> lock(release_mu_);
  releases_sent_.Add(1);
  if (pending_releases_.empty() &&
      release_out_.Stage(release) == RingWriter::Result::kOk) {
    release_out_.Publish();
    return;
  }
  pending_releases_.push_back(release);
  FlushPendingReleasesLocked();
}

uint64_t Endpoint::ReclaimAll() { return allocator_.ReleaseAll(); }

EndpointStats Endpoint::Stats() {
  DrainReleases();
  EndpointStats stats;
  stats.messages_sent = messages_sent_.Get();
  stats.bytes_sent = bytes_sent_.Get();
  stats.doorbells_sent = doorbells_sent_.Get();
  stats.doorbells_suppressed = doorbells_suppressed_.Get();
  stats.ring_full_waits = ring_full_waits_.Get();
  stats.messages_received = messages_received_.Get();
  stats.bytes_received = bytes_received_.Get();
  stats.wakeups = wakeups_.Get();
  stats.releases_sent = releases_sent_.Get();
  stats.releases_received = releases_received_.load(std::memory_order_relaxed);
  stats.invalid_descriptors = invalid_descriptors_.Get();
  stats.inline_sent = inline_sent_.Get();
  stats.inline_bytes_sent = inline_bytes_sent_.Get();
  stats.inline_received = inline_received_.Get();
  stats.inline_queue_waits = side_.queue_waits();
  stats.inline_queued_bytes_peak = side_.queued_bytes_peak();
  stats.arena = allocator_.Stats();
  return stats;
}

}  // namespace shmgrpc::shm
