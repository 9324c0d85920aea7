#include "transport/deadline_timer.h"

#include <algorithm>

#include "absl/time/clock.h"

namespace shmgrpc::transport {

DeadlineTimer& DeadlineTimer::Process() {
  static auto* timer = new DeadlineTimer;
  return *timer;
}

DeadlineTimer::~DeadlineTimer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<DeadlineTimer::Handle> DeadlineTimer::Schedule(
    absl::Time wall_deadline, std::function<void()> fire) {
  return ScheduleAfter(wall_deadline - wall_clock_(), std::move(fire));
}

absl::StatusOr<DeadlineTimer::Handle> DeadlineTimer::ScheduleAfter(
    absl::Duration delay, std::function<void()> fire) {
  // On the monotonic clock; saturated so that far (or infinite) deadlines
  // cannot overflow it.
  const Clock::time_point now = Clock::now();
  const Clock::time_point deadline =
      delay >= absl::FromChrono(Clock::time_point::max() - now)
          ? Clock::time_point::max()
          : now + std::chrono::duration_cast<Clock::duration>(
                      absl::ToChronoNanoseconds(
                          std::max(delay, absl::ZeroDuration())));
  std::lock_guard<std::mutex> lock(mu_);
  if (!thread_.joinable()) {
    absl::StatusOr<shm::Thread> thread =
        shm::Thread::Start("shm-deadlines", [this] { Run(); });
    if (!thread.ok()) return thread.status();
    thread_ = *std::move(thread);
  }
  const Handle handle(deadline, next_id_++);
  timers_.emplace(handle, std::move(fire));
  // The thread sleeps until thread_wakes_at_ (an earlier timer, perhaps
  // cancelled since, still counts: it then wakes, finds this one and sleeps
  // on): only an earlier deadline needs it now.
  if (deadline < thread_wakes_at_) changed_.notify_one();
  return handle;
}

bool DeadlineTimer::Cancel(const Handle& handle) {
  std::lock_guard<std::mutex> lock(mu_);
  return timers_.erase(handle) > 0;
}

uint64_t DeadlineTimer::wake_ups() const {
  std::lock_guard<std::mutex> lock(mu_);
  return wake_ups_;
}

void DeadlineTimer::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    const Clock::time_point now = Clock::now();
    auto first = timers_.begin();
    if (first != timers_.end() && first->first.first <= now) {
      std::function<void()> fire = std::move(first->second);
      timers_.erase(first);
      lock.unlock();
      fire();
      fire = nullptr;  // whatever it holds goes without the lock too
      lock.lock();
      continue;
    }
    thread_wakes_at_ =
        first == timers_.end() ? Clock::time_point::max() : first->first.first;
    if (thread_wakes_at_ == Clock::time_point::max()) {
      changed_.wait(lock);
    } else {
      changed_.wait_until(lock, thread_wakes_at_);
    }
    ++wake_ups_;
  }
}

}  // namespace shmgrpc::transport
