// DeadlineTimer: runs a callback at a deadline unless cancelled first; one
// thread serves every timer of the process.
//
// For the client's call deadlines, which it must enforce itself (a server
// that stopped reading never answers), and its retry backoffs. grpc::Alarm did
// this before, one per call, but a callback alarm cancelled in time (every call
// that ends before its deadline) still runs its callback, handed to a gRPC
// executor thread that is woken for it (gRPC's src/cpp/common/alarm.cc): with a
// deadline on every call, as production calls carry, that cost 1.5-3
// context switches and 20-35 us of CPU per call here (`ab_bench
// --deadline_ms`, 4 KiB unary, 64 callers: 14.9k-17.7k calls/s against
// 21.3k-23.3k with this; docs/PERFORMANCE.md). Here a cancel only erases
// an entry, and the thread sleeps until the earliest deadline it knows; a
// timer later than that wakes nobody, so calls with the usual long
// deadlines cost no wake-up at all.
//
// Deadlines are wall-clock times, as gRPC's are, but like gRPC's core the
// timer turns each into time left on the monotonic clock when it is
// scheduled: a step of the wall clock afterwards (NTP, a resumed VM, an
// admin's `date`) neither delays a timer nor fires it early.
//
// Callbacks run on the timer thread, one at a time, without the timer's
// lock: they may schedule and cancel timers; they must not block for long
// (later deadlines wait for them).
// Thread-safe.
#ifndef SHMGRPC_TRANSPORT_DEADLINE_TIMER_H_
#define SHMGRPC_TRANSPORT_DEADLINE_TIMER_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "shm/thread.h"

namespace shmgrpc::transport {

class DeadlineTimer {
 public:
  using Clock = std::chrono::steady_clock;
  // Names one scheduled callback, for Cancel.
  using Handle = std::pair<Clock::time_point, uint64_t>;

  // The process's timer (never destroyed: its thread may outlive main).
  static DeadlineTimer& Process();

  // `wall_clock` says what time it is, for turning deadlines into time
  // left (tests step a clock of their own; the machine's cannot be).
  explicit DeadlineTimer(std::function<absl::Time()> wall_clock = absl::Now)
      : wall_clock_(std::move(wall_clock)) {}
  // Stops the thread; callbacks not yet run never run.
  ~DeadlineTimer();
  DeadlineTimer(const DeadlineTimer&) = delete;
  DeadlineTimer& operator=(const DeadlineTimer&) = delete;

  // Runs `fire` once at `deadline` (at once if it has passed) unless
  // Cancel(handle) comes first. ResourceExhausted when the timer thread
  // cannot be started (tried again at the next call).
  absl::StatusOr<Handle> Schedule(absl::Time deadline,
                                  std::function<void()> fire);
  // The same `delay` from now, for timers that are a duration rather than
  // a wall-clock time (backoffs, lingers).
  absl::StatusOr<Handle> ScheduleAfter(absl::Duration delay,
                                       std::function<void()> fire);
  // True when `fire` will not run; false when it has run, is running, or
  // was cancelled before.
  bool Cancel(const Handle& handle);

  // How many times the thread woke (for tests: a timer later than the
  // earliest one must not wake it).
  uint64_t wake_ups() const;

 private:
  void Run();

  const std::function<absl::Time()> wall_clock_;
  mutable std::mutex mu_;
  std::condition_variable changed_;
  std::map<Handle, std::function<void()>> timers_;
  uint64_t next_id_ = 1;
  // When the thread wakes next without being notified (max: only when
  // notified).
  Clock::time_point thread_wakes_at_ = Clock::time_point::max();
  uint64_t wake_ups_ = 0;
  bool stopping_ = false;
  shm::Thread thread_;
};

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_DEADLINE_TIMER_H_
