#include "shm/ring.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace shmgrpc::shm {

absl::Status ValidateDescriptor(const Descriptor& descriptor,
                                uint64_t data_bytes) {
  if (descriptor.length == 0 && descriptor.offset == kNoPayload) {
    return absl::OkStatus();
  }
  if (descriptor.offset % kPayloadAlignment != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("descriptor offset ", descriptor.offset,
                     " is not aligned to ", kPayloadAlignment));
  }
  if (descriptor.offset >= data_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("descriptor offset ", descriptor.offset,
                     " is past the end of a ", data_bytes, "-byte area"));
  }
  // offset < data_bytes here, so the subtraction cannot wrap.
  if (descriptor.length > data_bytes - descriptor.offset) {
    return absl::InvalidArgumentError(absl::StrCat(
        "descriptor span [", descriptor.offset, ", +", descriptor.length,
        ") overruns a ", data_bytes, "-byte area"));
  }
  return absl::OkStatus();
}

RingWriter::RingWriter(RingProducerState* producer,
                       const RingConsumerState* consumer, uint32_t ring_slots)
    : producer_(producer),
      consumer_(consumer),
      slots_(reinterpret_cast<Descriptor*>(producer + 1)),
      capacity_(ring_slots) {
  tail_ = published_tail_ = producer_->tail.load(std::memory_order_relaxed);
  cached_head_ = tail_;
}

bool RingWriter::RefreshHead() {
  const uint64_t head = consumer_->head.load(std::memory_order_acquire);
  // The consumer can only have consumed what was published, and never moves
  // backwards.
  if (head > published_tail_ || head < cached_head_) return false;
  cached_head_ = head;
  return true;
}

RingWriter::Result RingWriter::Stage(const Descriptor& descriptor) {
  if (tail_ - cached_head_ >= capacity_) {
    if (!RefreshHead()) return Result::kCorrupt;
    if (tail_ - cached_head_ >= capacity_) return Result::kFull;
  }
  slots_[tail_ & (capacity_ - 1)] = descriptor;
  ++tail_;
  return Result::kOk;
}

void RingWriter::Publish() {
  if (published_tail_ == tail_) return;
  published_tail_ = tail_;
  producer_->tail.store(tail_, std::memory_order_release);
}

bool RingWriter::ConsumerNeedsDoorbell() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const uint64_t wake_state =
      consumer_->wake_state.load(std::memory_order_relaxed);
  if ((wake_state & 1) == 0 || wake_state == last_rung_wake_state_) {
    return false;
  }
  last_rung_wake_state_ = wake_state;
  return true;
}

RingReader::RingReader(const RingProducerState* producer,
                       RingConsumerState* consumer, uint32_t ring_slots)
    : producer_(producer),
      consumer_(consumer),
      slots_(reinterpret_cast<const Descriptor*>(producer + 1)),
      capacity_(ring_slots) {
  head_ = cached_tail_ = consumer_->head.load(std::memory_order_relaxed);
}

RingReader::Result RingReader::Pop(Descriptor* out) {
  if (head_ == cached_tail_) {
    const uint64_t tail = producer_->tail.load(std::memory_order_acquire);
    if (tail == head_) return Result::kEmpty;
    // A tail behind the head or more than a ring ahead is a lying producer.
    if (tail < head_ || tail - head_ > capacity_) return Result::kCorrupt;
    cached_tail_ = tail;
  }
  // One copy out of the peer's memory; the caller validates the copy.
  std::memcpy(out, &slots_[head_ & (capacity_ - 1)], sizeof(Descriptor));
  ++head_;
  consumer_->head.store(head_, std::memory_order_release);
  return Result::kOk;
}

bool RingReader::Empty() {
  if (head_ != cached_tail_) return false;
  return producer_->tail.load(std::memory_order_acquire) == head_;
}

void RingReader::MarkAsleep() {
  ++sleeps_;
  consumer_->wake_state.store(sleeps_ * 2 + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

void RingReader::MarkAwake() {
  consumer_->wake_state.store(sleeps_ * 2 + 2, std::memory_order_release);
}

}  // namespace shmgrpc::shm
