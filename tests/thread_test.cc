// shm::Thread and shm::ReservedThread on their own: a body runs, joins and
// detaches, IsCurrent tells the thread apart, a reserved thread runs the
// body it is given later or ends unused. (A failed start, which needs a
// process out of threads, is grpc_thread_limit_test's.)
#include "shm/thread.h"

#include <atomic>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace shmgrpc::shm {
namespace {

TEST(ThreadTest, RunsItsBodyAndJoins) {
  std::atomic<bool> ran{false};
  std::atomic<bool> current_inside{false};
  Thread* self = nullptr;
  absl::Notification started;
  absl::StatusOr<Thread> thread = Thread::Start([&] {
    started.WaitForNotification();
    current_inside = self->IsCurrent();
    ran = true;
  });
  ASSERT_TRUE(thread.ok()) << thread.status();
  self = &*thread;
  EXPECT_TRUE(thread->joinable());
  EXPECT_FALSE(thread->IsCurrent());
  started.Notify();
  thread->join();
  EXPECT_FALSE(thread->joinable());
  EXPECT_TRUE(ran);
  EXPECT_TRUE(current_inside);
}

TEST(ThreadTest, DetachedThreadRunsOnAndMovesKeepOwnership) {
  absl::Notification done;
  absl::StatusOr<Thread> thread = Thread::Start([&] { done.Notify(); });
  ASSERT_TRUE(thread.ok());
  Thread moved = *std::move(thread);
  EXPECT_FALSE(thread->joinable()) << "the moved-from thread owns nothing";
  EXPECT_TRUE(moved.joinable());
  moved.detach();
  EXPECT_FALSE(moved.joinable());
  EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(5)));
}

TEST(ReservedThreadTest, RunsTheBodyGivenLater) {
  absl::StatusOr<ReservedThread> reserved = ReservedThread::Start();
  ASSERT_TRUE(reserved.ok()) << reserved.status();
  absl::SleepFor(absl::Milliseconds(20));  // it waits, running nothing
  std::atomic<int> runs{0};
  Thread thread = reserved->Run([&] { ++runs; });
  ASSERT_TRUE(thread.joinable());
  thread.join();
  EXPECT_EQ(runs.load(), 1);
  reserved->Release();  // after Run: nothing left to release
}

TEST(ReservedThreadTest, ReleasedOrDroppedItEndsUnused) {
  {
    absl::StatusOr<ReservedThread> reserved = ReservedThread::Start();
    ASSERT_TRUE(reserved.ok());
    reserved->Release();
    reserved->Release();  // idempotent
  }
  {
    absl::StatusOr<ReservedThread> reserved = ReservedThread::Start();
    ASSERT_TRUE(reserved.ok());
  }  // the destructor ends and joins it: no thread is left behind
}

}  // namespace
}  // namespace shmgrpc::shm
