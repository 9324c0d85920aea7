// Per-stream flow control for streaming calls, in both directions.
//
// Without it a fast sender would pile messages (and, once the arena is full,
// inline heap copies) into a slow receiver's per-stream queue without bound.
// A sender may have at most `max_messages` messages, or `max_bytes` bytes
// (one message may cross that line), sent but not yet consumed by the
// receiving application. The receiver returns credit with a kWindowUpdate
// frame once half of either limit has been consumed since its last credit.
//
// Why this cannot deadlock: a sender waits only while its unacknowledged
// count reaches a limit, and the message that reached it says so
// (codec::kWindowFullFlag): once the receiver consumes that message, it
// credits everything consumed, whatever its own limits. (With equal limits
// on both sides half of them is consumed by then anyway; the flag is what
// makes limits that differ safe.)
//
// Unary calls carry one message each way and do not use windows.
// Thread-safety: both classes are thread-safe.
#ifndef SHMGRPC_TRANSPORT_FLOW_WINDOW_H_
#define SHMGRPC_TRANSPORT_FLOW_WINDOW_H_

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace shmgrpc::transport {

struct Credit {
  uint64_t messages = 0;
  uint64_t bytes = 0;
};

// A credit as the `aux` word of a kWindowUpdate descriptor: messages in the
// top 16 bits, bytes in the low 48.
uint64_t EncodeCredit(const Credit& credit);
Credit DecodeCredit(uint64_t aux);

class SendWindow {
 public:
  SendWindow(uint64_t max_bytes, uint64_t max_messages)
      : max_bytes_(max_bytes), max_messages_(max_messages) {}

  // True when a message may be sent now.
  bool HasRoom();
  // Waits for room. DeadlineExceeded at `deadline`, Cancelled after Close().
  absl::Status WaitForRoom(absl::Time deadline);
  // Call before the message leaves: its credit can come back before the send
  // call returns. True when the window is full with it: the message is then
  // sent with codec::kWindowFullFlag.
  bool OnSent(uint64_t bytes);
  void OnCredit(const Credit& credit);
  // Wakes and fails every waiter, now and later (the call ended).
  void Close();

 private:
  bool HasRoomLocked() const {
    return closed_ || (in_flight_messages_ < max_messages_ &&
                       in_flight_bytes_ < max_bytes_);
  }

  const uint64_t max_bytes_;
  const uint64_t max_messages_;
  std::mutex mu_;
  std::condition_variable room_;
  uint64_t in_flight_bytes_ = 0;
  uint64_t in_flight_messages_ = 0;
  bool closed_ = false;
};

class ReceiveWindow {
 public:
  ReceiveWindow(uint64_t max_bytes, uint64_t max_messages)
      : credit_bytes_(max_bytes / 2), credit_messages_(max_messages / 2) {}

  // Records a message the application consumed; returns the credit to send
  // now, if any: once half of either limit was consumed since the last one,
  // or at once when the message's sender waits for it (`sender_waits`: it
  // carried codec::kWindowFullFlag).
  std::optional<Credit> OnConsumed(uint64_t bytes, bool sender_waits);

 private:
  const uint64_t credit_bytes_;
  const uint64_t credit_messages_;
  std::mutex mu_;
  Credit uncredited_;
};

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_FLOW_WINDOW_H_
