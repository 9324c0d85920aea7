// Per-stream flow control for streaming calls, in both directions.
//
// Without it a fast sender would pile messages (and, once the arena is full,
// inline heap copies) into a slow receiver's per-stream queue without bound.
// A sender may have at most `max_messages` messages, or `max_bytes` bytes
// (one message may cross that line), sent but not yet consumed by the
// receiving application. The receiver returns credit with a kWindowUpdate
// frame once half of either limit has been consumed since its last credit.
//
// Whose limits: each side sizes its receive window from its own Options and
// tells its peer (the server for all streams in the handshake's welcome, a
// client per stream in its kCallHeaders frame); a sender keeps to the smaller
// of its own limits and its receiver's (SenderLimits). A receiver therefore
// knows what an honest sender may have outstanding, and refuses a stream
// whose sender sent more (ReceiveWindow::OnArrived): a hostile peer cannot
// pile messages into its queue without bound.
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
// top 16 bits, bytes in the low 48. A window's limits as advertised to the
// peer take the same encoding.
uint64_t EncodeCredit(const Credit& credit);
Credit DecodeCredit(uint64_t aux);

// The most messages a window may hold: one credit can return that many.
inline constexpr uint64_t kMaxWindowMessages = 0xffff;

// A stream's limits in one direction: at most `messages` messages, and
// `bytes` bytes (one message may cross that line), sent and not yet credited.
struct WindowLimits {
  uint64_t messages = 0;
  uint64_t bytes = 0;
};
// This side's limits from its Options, as it enforces and advertises them
// (messages capped at kMaxWindowMessages; at least 1 of each).
WindowLimits OwnWindowLimits(uint64_t bytes, uint64_t messages);
// What a sender keeps to: its own limits, narrowed to the ones its receiver
// advertised (`advertised` as EncodeCredit made it; 0, or a zero field:
// nothing advertised, and its own limit holds).
WindowLimits SenderLimits(const WindowLimits& own, uint64_t advertised);
uint64_t EncodeWindowLimits(const WindowLimits& limits);

class SendWindow {
 public:
  explicit SendWindow(const WindowLimits& limits)
      : max_bytes_(limits.bytes), max_messages_(limits.messages) {}

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
  // `limits`: this side's own (OwnWindowLimits), as advertised to the sender.
  explicit ReceiveWindow(const WindowLimits& limits)
      : limits_(limits),
        credit_bytes_(limits.bytes / 2),
        credit_messages_(limits.messages / 2) {}

  // Records a whole message as it arrives, before it is queued. False when
  // its sender broke the window: it already had the limit's messages or
  // bytes outstanding (arrived and not credited back), more than a sender
  // keeping to the advertised limits ever has. The caller then ends the
  // stream; the message is not counted.
  bool OnArrived(uint64_t bytes);
  const WindowLimits& limits() const { return limits_; }
  // Records a message the application consumed; returns the credit to send
  // now, if any: once half of either limit was consumed since the last one,
  // or at once when the message's sender waits for it (`sender_waits`: it
  // carried codec::kWindowFullFlag).
  std::optional<Credit> OnConsumed(uint64_t bytes, bool sender_waits);

 private:
  const WindowLimits limits_;
  const uint64_t credit_bytes_;
  const uint64_t credit_messages_;
  std::mutex mu_;
  Credit outstanding_;  // arrived, not yet credited back
  Credit uncredited_;   // consumed, not yet credited back
};

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_FLOW_WINDOW_H_
