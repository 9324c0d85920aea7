#include "transport/flow_window.h"

#include <algorithm>
#include <utility>

namespace shmgrpc::transport {
namespace {

constexpr int kCreditByteBits = 48;
constexpr uint64_t kCreditByteMask = (uint64_t{1} << kCreditByteBits) - 1;
constexpr uint64_t kCreditMaxMessages = 0xffff;

}  // namespace

uint64_t EncodeCredit(const Credit& credit) {
  return (std::min(credit.messages, kCreditMaxMessages) << kCreditByteBits) |
         std::min(credit.bytes, kCreditByteMask);
}

Credit DecodeCredit(uint64_t aux) {
  return Credit{aux >> kCreditByteBits, aux & kCreditByteMask};
}

bool SendWindow::HasRoom() {
  std::lock_guard<std::mutex> lock(mu_);
  return HasRoomLocked();
}

absl::Status SendWindow::WaitForRoom(absl::Time deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  if (deadline == absl::InfiniteFuture()) {
    // Not through wait_until: time_point::max overflows inside it.
    room_.wait(lock, [&] { return HasRoomLocked(); });
  } else if (!room_.wait_until(lock, absl::ToChronoTime(deadline),
                               [&] { return HasRoomLocked(); })) {
    return absl::DeadlineExceededError(
        "stream's flow-control window stayed full until the deadline");
  }
  if (closed_) return absl::CancelledError("call ended");
  return absl::OkStatus();
}

bool SendWindow::OnSent(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  in_flight_bytes_ += bytes;
  ++in_flight_messages_;
  return !HasRoomLocked();
}

void SendWindow::OnCredit(const Credit& credit) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    // A peer crediting more than was sent is clamped, never wrapped.
    in_flight_bytes_ -= std::min(in_flight_bytes_, credit.bytes);
    in_flight_messages_ -= std::min(in_flight_messages_, credit.messages);
  }
  room_.notify_all();
}

void SendWindow::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  room_.notify_all();
}

std::optional<Credit> ReceiveWindow::OnConsumed(uint64_t bytes,
                                                bool sender_waits) {
  std::lock_guard<std::mutex> lock(mu_);
  uncredited_.bytes += bytes;
  ++uncredited_.messages;
  if (!sender_waits && uncredited_.bytes < credit_bytes_ &&
      uncredited_.messages < credit_messages_) {
    return std::nullopt;
  }
  return std::exchange(uncredited_, Credit{});
}

}  // namespace shmgrpc::transport
