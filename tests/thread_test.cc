// shm::Thread and shm::ReservedThread on their own: a body runs, joins and
// detaches, IsCurrent tells the thread apart, a thread carries the name it
// was started (or run) with, a reserved thread runs the body it is given
// later or ends unused. (A failed start, which needs a
// process out of threads, is grpc_thread_limit_test's.)
#include "shm/thread.h"

#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace shmgrpc::shm {
namespace {

// A gate the test opens once; std::mutex, not absl::Notification, so that
// ThreadSanitizer (with Debian's uninstrumented abseil) sees the hand-off.
class Gate {
 public:
  void Open() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_ = true;
    }
    opened_.notify_all();
  }
  bool WaitFor(absl::Duration timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return opened_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                            [&] { return open_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable opened_;
  bool open_ = false;
};

// The name a thread has now, as `ps -L` and `perf` show it.
std::string NameOf(pthread_t thread) {
  char name[16] = {};
  pthread_getname_np(thread, name, sizeof(name));
  return name;
}

TEST(ThreadTest, RunsItsBodyAndJoins) {
  std::atomic<bool> ran{false};
  std::atomic<bool> current_inside{false};
  std::string name_inside;  // written before `ran`
  Thread* self = nullptr;  // set before the gate opens
  Gate started;
  absl::StatusOr<Thread> thread = Thread::Start("test-body", [&] {
    started.WaitFor(absl::Seconds(30));
    current_inside = self->IsCurrent();
    name_inside = NameOf(pthread_self());
    ran = true;
  });
  ASSERT_TRUE(thread.ok()) << thread.status();
  self = &*thread;
  EXPECT_TRUE(thread->joinable());
  EXPECT_FALSE(thread->IsCurrent());
  started.Open();
  thread->join();
  EXPECT_FALSE(thread->joinable());
  EXPECT_TRUE(ran);
  EXPECT_TRUE(current_inside);
  // Named by Start, not by its body: a name is there as soon as the thread.
  EXPECT_EQ(name_inside, "test-body");
}

TEST(ThreadTest, DetachedThreadRunsOnAndMovesKeepOwnership) {
  // Shared: the detached thread may still be in Open() when the test ends.
  auto done = std::make_shared<Gate>();
  absl::StatusOr<Thread> thread =
      Thread::Start("test-detached", [done] { done->Open(); });
  ASSERT_TRUE(thread.ok());
  Thread moved = *std::move(thread);
  EXPECT_FALSE(thread->joinable()) << "the moved-from thread owns nothing";
  EXPECT_TRUE(moved.joinable());
  moved.detach();
  EXPECT_FALSE(moved.joinable());
  EXPECT_TRUE(done->WaitFor(absl::Seconds(5)));
}

TEST(ReservedThreadTest, RunsTheBodyGivenLater) {
  absl::StatusOr<ReservedThread> reserved = ReservedThread::Start();
  ASSERT_TRUE(reserved.ok()) << reserved.status();
  absl::SleepFor(absl::Milliseconds(20));  // it waits, running nothing
  std::atomic<int> runs{0};
  std::string name_inside;
  Thread thread = reserved->Run("test-reserved", [&] {
    name_inside = NameOf(pthread_self());
    ++runs;
  });
  ASSERT_TRUE(thread.joinable());
  thread.join();
  EXPECT_EQ(runs.load(), 1);
  EXPECT_EQ(name_inside, "test-reserved");
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
