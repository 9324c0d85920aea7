#include "transport/flow_window.h"

#include <algorithm>
#include <utility>

namespace shmgrpc::transport {
namespace {

constexpr int kCreditByteBits = 48;
constexpr uint64_t kCreditByteMask = (uint64_t{1} << kCreditByteBits) - 1;

}  // namespace

uint64_t EncodeCredit(const Credit& credit) {
  return (std::min(credit.messages, kMaxWindowMessages) << kCreditByteBits) |
         std::min(credit.bytes, kCreditByteMask);
}

Credit DecodeCredit(uint64_t aux) {
  return Credit{aux >> kCreditByteBits, aux & kCreditByteMask};
}

WindowLimits OwnWindowLimits(uint64_t bytes, uint64_t messages) {
  return WindowLimits{std::clamp<uint64_t>(messages, 1, kMaxWindowMessages),
                      std::clamp<uint64_t>(bytes, 1, kCreditByteMask)};
}

WindowLimits SenderLimits(const WindowLimits& own, uint64_t advertised) {
  const Credit theirs = DecodeCredit(advertised);
  WindowLimits limits = own;
  if (theirs.messages > 0) {
    limits.messages = std::min(limits.messages, theirs.messages);
  }
  if (theirs.bytes > 0) limits.bytes = std::min(limits.bytes, theirs.bytes);
  return limits;
}

uint64_t EncodeWindowLimits(const WindowLimits& limits) {
  return EncodeCredit(Credit{limits.messages, limits.bytes});
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

bool ReceiveWindow::OnArrived(uint64_t bytes) {
  // A sender sends only while its own count, which is never below this one
  // (credit reaches it after it left here), is under the limits.
  std::lock_guard<std::mutex> lock(mu_);
  if (outstanding_.messages >= limits_.messages ||
      outstanding_.bytes >= limits_.bytes) {
    return false;
  }
  ++outstanding_.messages;
  outstanding_.bytes += bytes;
  return true;
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
  // Counted back before the credit leaves: the sender may use it at once.
  outstanding_.messages -=
      std::min(outstanding_.messages, uncredited_.messages);
  outstanding_.bytes -= std::min(outstanding_.bytes, uncredited_.bytes);
  return std::exchange(uncredited_, Credit{});
}

}  // namespace shmgrpc::transport
