#include "shm/thread.h"

#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "shm/thread_name.h"

namespace shmgrpc::shm {
namespace {

void* RunBody(void* arg) {
  std::unique_ptr<std::function<void()>> body(
      static_cast<std::function<void()>*>(arg));
  (*body)();
  return nullptr;
}

}  // namespace

Thread::Thread(Thread&& other) noexcept
    : handle_(other.handle_), started_(std::exchange(other.started_, false)) {}

Thread& Thread::operator=(Thread&& other) noexcept {
  if (started_) std::abort();  // as std::thread: the old thread is lost
  handle_ = other.handle_;
  started_ = std::exchange(other.started_, false);
  return *this;
}

Thread::~Thread() {
  if (started_) std::abort();  // neither joined nor detached
}

absl::StatusOr<Thread> Thread::Start(const char* name,
                                     std::function<void()> body) {
  auto owned = std::make_unique<std::function<void()>>(std::move(body));
  Thread thread;
  const int err =
      pthread_create(&thread.handle_, nullptr, &RunBody, owned.get());
  if (err != 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot start a thread: ", strerror(err)));
  }
  owned.release();  // RunBody owns it now
  thread.started_ = true;
  thread.Name(name);
  return thread;
}

void Thread::join() {
  if (!started_) return;
  pthread_join(handle_, nullptr);
  started_ = false;
}

void Thread::detach() {
  if (!started_) return;
  pthread_detach(handle_);
  started_ = false;
}

bool Thread::IsCurrent() const {
  return started_ && pthread_equal(handle_, pthread_self()) != 0;
}

void Thread::Name(const char* name) {
  if (started_) NameThread(handle_, name);
}

struct ReservedThread::Handoff {
  std::mutex mu;
  std::condition_variable given;
  std::function<void()> body;  // guarded by mu
  bool released = false;       // guarded by mu
};

absl::StatusOr<ReservedThread> ReservedThread::Start() {
  auto handoff = std::make_shared<Handoff>();
  absl::StatusOr<Thread> thread = Thread::Start("shm-reserved", [handoff] {
    std::function<void()> body;
    {
      std::unique_lock<std::mutex> lock(handoff->mu);
      handoff->given.wait(lock,
                          [&] { return handoff->body || handoff->released; });
      body = std::move(handoff->body);
    }
    if (body) body();
  });
  if (!thread.ok()) return thread.status();
  return ReservedThread(std::move(handoff), *std::move(thread));
}

Thread ReservedThread::Run(const char* name, std::function<void()> body) {
  thread_.Name(name);
  {
    std::lock_guard<std::mutex> lock(handoff_->mu);
    handoff_->body = std::move(body);
  }
  handoff_->given.notify_one();
  return std::move(thread_);
}

void ReservedThread::Release() {
  if (!thread_.joinable()) return;  // moved from, run or released
  {
    std::lock_guard<std::mutex> lock(handoff_->mu);
    handoff_->released = true;
  }
  handoff_->given.notify_one();
  thread_.join();
}

}  // namespace shmgrpc::shm
