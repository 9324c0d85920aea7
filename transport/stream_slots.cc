#include "transport/stream_slots.h"

#include <utility>

namespace shmgrpc::transport {

StreamSlot& StreamSlot::operator=(StreamSlot&& other) noexcept {
  if (this != &other) {
    Release();
    slots_ = std::exchange(other.slots_, nullptr);
  }
  return *this;
}

void StreamSlot::Release() {
  if (slots_ == nullptr) return;
  slots_->open_.fetch_sub(1, std::memory_order_release);
  slots_ = nullptr;
}

StreamSlot StreamSlots::TryOpen() {
  // Exact under concurrency (a failed attempt never shows others a count it
  // did not have), so a client at its limit minus one is never sent plain
  // for nothing.
  uint64_t open = open_.load(std::memory_order_acquire);
  do {
    if (limit_ != 0 && open >= limit_) return StreamSlot();
  } while (!open_.compare_exchange_weak(
      open, open + 1, std::memory_order_acq_rel, std::memory_order_acquire));
  return StreamSlot(this);
}

}  // namespace shmgrpc::transport
