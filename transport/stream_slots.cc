#include "transport/stream_slots.h"

#include <utility>

namespace shmgrpc::transport {

StreamSlot& StreamSlot::operator=(StreamSlot&& other) noexcept {
  if (this != &other) {
    Release();
    count_ = std::move(other.count_);
  }
  return *this;
}

void StreamSlot::Release() {
  if (count_ == nullptr) return;
  count_->open.fetch_sub(1, std::memory_order_release);
  count_ = nullptr;
}

StreamSlot StreamSlots::TryOpen() {
  // Exact under concurrency (a failed attempt never shows others a count it
  // did not have), so a client at its limit minus one is never sent plain
  // for nothing.
  std::atomic<uint64_t>& open = count_->open;
  uint64_t now_open = open.load(std::memory_order_acquire);
  do {
    if (count_->limit != 0 && now_open >= count_->limit) return StreamSlot();
  } while (!open.compare_exchange_weak(now_open, now_open + 1,
                                       std::memory_order_acq_rel,
                                       std::memory_order_acquire));
  return StreamSlot(count_);
}

}  // namespace shmgrpc::transport
