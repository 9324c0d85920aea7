// DeadlineTimer: callbacks run at their deadlines, in order; a cancelled one
// never runs; callbacks may schedule and cancel; a timer later than the
// earliest one wakes nobody (the point of it: calls that end before their
// deadline cost no wake-up); and a step of the wall clock moves no timer.
#include "transport/deadline_timer.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace shmgrpc::transport {
namespace {

// Collects which callbacks ran, and when.
class Fired {
 public:
  std::function<void()> Callback(int id) {
    return [this, id] {
      std::lock_guard<std::mutex> lock(mu_);
      order_.push_back(id);
      at_.push_back(absl::Now());
      cv_.notify_all();
    };
  }
  // Waits up to 5 s for `count` callbacks in all.
  bool WaitFor(size_t count) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(5),
                        [&] { return order_.size() >= count; });
  }
  std::vector<int> order() {
    std::lock_guard<std::mutex> lock(mu_);
    return order_;
  }
  std::vector<absl::Time> at() {
    std::lock_guard<std::mutex> lock(mu_);
    return at_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int> order_;
  std::vector<absl::Time> at_;
};

TEST(DeadlineTimerTest, RunsEachAtItsDeadlineInOrder) {
  DeadlineTimer timer;
  Fired fired;
  // The thread asleep until a far timer; then each timer scheduled is
  // earlier than the one it sleeps until and must wake it (else it runs
  // late: at 10 s, or 370 ms late).
  absl::StatusOr<DeadlineTimer::Handle> far =
      timer.Schedule(absl::Now() + absl::Seconds(10), [] {});
  ASSERT_TRUE(far.ok());
  absl::SleepFor(absl::Milliseconds(50));
  const absl::Time start = absl::Now();
  ASSERT_TRUE(
      timer.Schedule(start + absl::Milliseconds(400), fired.Callback(2)).ok());
  ASSERT_TRUE(
      timer.Schedule(start + absl::Milliseconds(30), fired.Callback(1)).ok());
  ASSERT_TRUE(fired.WaitFor(2));
  EXPECT_EQ(fired.order(), (std::vector<int>{1, 2}));
  const std::vector<absl::Time> at = fired.at();
  EXPECT_GE(at[0], start + absl::Milliseconds(30)) << "early";
  EXPECT_LT(at[0], start + absl::Milliseconds(330)) << "slept past it";
  EXPECT_GE(at[1], start + absl::Milliseconds(400)) << "early";
  EXPECT_LT(at[1], start + absl::Milliseconds(700)) << "slept past it";
  EXPECT_TRUE(timer.Cancel(*far));
}

TEST(DeadlineTimerTest, APassedDeadlineRunsAtOnce) {
  DeadlineTimer timer;
  Fired fired;
  const absl::Time start = absl::Now();
  ASSERT_TRUE(timer.Schedule(start - absl::Seconds(1), fired.Callback(1)).ok());
  ASSERT_TRUE(fired.WaitFor(1));
  EXPECT_LT(fired.at()[0] - start, absl::Milliseconds(50));
}

TEST(DeadlineTimerTest, CancelledBeforeItsDeadlineItNeverRuns) {
  DeadlineTimer timer;
  Fired fired;
  absl::StatusOr<DeadlineTimer::Handle> cancelled =
      timer.Schedule(absl::Now() + absl::Milliseconds(20), fired.Callback(1));
  absl::StatusOr<DeadlineTimer::Handle> kept =
      timer.Schedule(absl::Now() + absl::Milliseconds(60), fired.Callback(2));
  ASSERT_TRUE(cancelled.ok());
  ASSERT_TRUE(kept.ok());
  EXPECT_TRUE(timer.Cancel(*cancelled));
  EXPECT_FALSE(timer.Cancel(*cancelled)) << "once only";
  ASSERT_TRUE(fired.WaitFor(1));
  absl::SleepFor(absl::Milliseconds(30));
  EXPECT_EQ(fired.order(), (std::vector<int>{2}));
  EXPECT_FALSE(timer.Cancel(*kept)) << "it ran already";
}

TEST(DeadlineTimerTest, CallbacksMayScheduleAndCancel) {
  DeadlineTimer timer;
  Fired fired;
  absl::StatusOr<DeadlineTimer::Handle> victim =
      timer.Schedule(absl::Now() + absl::Seconds(10), fired.Callback(99));
  ASSERT_TRUE(victim.ok());
  ASSERT_TRUE(
      timer
          .Schedule(absl::Now(),
                    [&] {
                      EXPECT_TRUE(timer.Cancel(*victim));
                      EXPECT_TRUE(
                          timer.Schedule(absl::Now(), fired.Callback(2)).ok());
                    })
          .ok());
  ASSERT_TRUE(fired.WaitFor(1));
  EXPECT_EQ(fired.order(), (std::vector<int>{2}));
}

// A sequential caller: every call schedules a deadline 10 s ahead and
// cancels it when it ends, 100 us later. With the thread asleep until an
// earlier timer (5 s ahead), each of 300 such calls is later than that and
// wakes nobody; a notify on every Schedule woke it 300 times.
TEST(DeadlineTimerTest, LaterDeadlinesWakeNobody) {
  DeadlineTimer timer;
  absl::StatusOr<DeadlineTimer::Handle> earlier =
      timer.Schedule(absl::Now() + absl::Seconds(5), [] {});
  ASSERT_TRUE(earlier.ok());
  absl::SleepFor(absl::Milliseconds(100));  // the thread is asleep now
  const uint64_t before = timer.wake_ups();
  for (int i = 0; i < 300; ++i) {
    absl::StatusOr<DeadlineTimer::Handle> handle =
        timer.Schedule(absl::Now() + absl::Seconds(10),
                       [] { ADD_FAILURE() << "a cancelled timer ran"; });
    ASSERT_TRUE(handle.ok());
    absl::SleepFor(absl::Microseconds(100));  // the call
    ASSERT_TRUE(timer.Cancel(*handle));
  }
  // (A spurious wake-up or two may happen; one per call may not.)
  EXPECT_LE(timer.wake_ups() - before, 2u);
  EXPECT_TRUE(timer.Cancel(*earlier));
}

TEST(DeadlineTimerTest, ManyThreadsSchedulingAndCancelling) {
  DeadlineTimer timer;
  std::atomic<int> ran{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        // Every other one runs (a deadline now), the rest are cancelled.
        const bool expire = i % 2 == 0;
        absl::StatusOr<DeadlineTimer::Handle> handle = timer.Schedule(
            absl::Now() + (expire ? absl::ZeroDuration() : absl::Seconds(5)),
            [&ran] { ran.fetch_add(1); });
        ASSERT_TRUE(handle.ok());
        if (!expire) {
          EXPECT_TRUE(timer.Cancel(*handle)) << t << "/" << i;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  const absl::Time until = absl::Now() + absl::Seconds(5);
  while (ran.load() < 4000 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(ran.load(), 4000);
}

// A wall clock the test can step, as NTP, a resumed VM or an admin's `date`
// steps the machine's (which a test must not touch).
class SteppedWallClock {
 public:
  absl::Time Now() const {
    return absl::Now() + absl::Nanoseconds(offset_ns_.load());
  }
  void Step(absl::Duration by) {
    offset_ns_.fetch_add(absl::ToInt64Nanoseconds(by));
  }

 private:
  std::atomic<int64_t> offset_ns_{0};
};

TEST(DeadlineTimerTest, AWallClockStepBackDelaysNoTimer) {
  SteppedWallClock clock;
  DeadlineTimer timer([&clock] { return clock.Now(); });
  Fired fired;
  const absl::Time start = absl::Now();
  ASSERT_TRUE(
      timer.Schedule(clock.Now() + absl::Milliseconds(300), fired.Callback(1))
          .ok());
  clock.Step(-absl::Hours(1));
  ASSERT_TRUE(fired.WaitFor(1)) << "the step back delayed it";
  EXPECT_GE(fired.at()[0] - start, absl::Milliseconds(300));
}

TEST(DeadlineTimerTest, AWallClockStepForwardFiresNoTimerEarly) {
  SteppedWallClock clock;
  DeadlineTimer timer([&clock] { return clock.Now(); });
  Fired fired;
  const absl::Time start = absl::Now();
  ASSERT_TRUE(
      timer.Schedule(clock.Now() + absl::Milliseconds(400), fired.Callback(1))
          .ok());
  clock.Step(absl::Hours(1));
  // A timer scheduled after the step, with the stepped clock's deadlines,
  // keeps its place before the first.
  ASSERT_TRUE(
      timer.Schedule(clock.Now() + absl::Milliseconds(200), fired.Callback(2))
          .ok());
  ASSERT_TRUE(fired.WaitFor(2));
  EXPECT_EQ(fired.order(), (std::vector<int>{2, 1}));
  EXPECT_GE(fired.at()[0] - start, absl::Milliseconds(200));
  EXPECT_GE(fired.at()[1] - start, absl::Milliseconds(400)) << "fired early";
}

// A delay from now, as backoffs and lingers are, ignores the wall clock.
TEST(DeadlineTimerTest, ScheduleAfterRunsAfterTheDelay) {
  SteppedWallClock clock;
  DeadlineTimer timer([&clock] { return clock.Now(); });
  Fired fired;
  const absl::Time start = absl::Now();
  clock.Step(-absl::Hours(1));
  ASSERT_TRUE(
      timer.ScheduleAfter(absl::Milliseconds(150), fired.Callback(1)).ok());
  ASSERT_TRUE(fired.WaitFor(1));
  EXPECT_GE(fired.at()[0] - start, absl::Milliseconds(150));
}

// Deadlines beyond what the monotonic clock can hold (InfiniteFuture, or
// years away) do not overflow into the past.
TEST(DeadlineTimerTest, FarDeadlinesNeverFire) {
  DeadlineTimer timer;
  Fired fired;
  ASSERT_TRUE(timer.Schedule(absl::InfiniteFuture(), fired.Callback(1)).ok());
  ASSERT_TRUE(timer
                  .Schedule(absl::Now() + absl::Hours(24 * 365 * 1000),
                            fired.Callback(2))
                  .ok());
  ASSERT_TRUE(
      timer.Schedule(absl::Now() + absl::Milliseconds(50), fired.Callback(3))
          .ok());
  ASSERT_TRUE(fired.WaitFor(1));
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(fired.order(), (std::vector<int>{3}));
}

}  // namespace
}  // namespace shmgrpc::transport
