// A thread whose start can fail without ending the process.
//
// std::thread reports a failed start (EAGAIN: the process, its user or its
// pids cgroup has no thread left to give) by throwing std::system_error;
// nothing in this project catches exceptions, so a server out of threads —
// e.g. one shm session too many in a container with a pids limit — would
// end, taking its plain gRPC service with it. Thread::Start returns the
// error instead, and each caller degrades: a refused session, a call that
// fails or goes plain.
//
// Otherwise it is used like std::thread: a started thread must be joined or
// detached before its Thread is destroyed or assigned to (checked: the
// process aborts, as std::thread's destructor would). Not thread-safe: one
// owner calls join/detach.
#ifndef SHMGRPC_SHM_THREAD_H_
#define SHMGRPC_SHM_THREAD_H_

#include <pthread.h>

#include <functional>
#include <memory>

#include "absl/status/statusor.h"

namespace shmgrpc::shm {

class Thread {
 public:
  Thread() = default;
  Thread(Thread&& other) noexcept;
  Thread& operator=(Thread&& other) noexcept;
  ~Thread();

  // Runs `body` on a new thread, named `name` (thread_name.h) before this
  // returns, whether or not the thread has run yet. ResourceExhausted
  // (saying what failed) when none can be started; `body` is then destroyed
  // without running.
  static absl::StatusOr<Thread> Start(const char* name,
                                      std::function<void()> body);

  bool joinable() const { return started_; }
  void join();
  void detach();
  // True when called on this thread.
  bool IsCurrent() const;
  // Names the thread (thread_name.h); nothing once joined or detached.
  void Name(const char* name);

 private:
  pthread_t handle_{};
  bool started_ = false;
};

// A thread started before its work is known, for an owner that must be sure
// of a thread before it commits to something it cannot take back (a server
// answering a handshake: once the client has the welcome it sends calls, and
// a session closed then for want of a thread would fail them). Run() gives
// it its body; Release() ends it unused, and so does the destructor.
class ReservedThread {
 public:
  // ResourceExhausted when no thread can be started.
  static absl::StatusOr<ReservedThread> Start();

  ReservedThread(ReservedThread&&) = default;
  ReservedThread& operator=(ReservedThread&&) = delete;
  ~ReservedThread() { Release(); }

  // Names the reserved thread `name` and runs `body` on it; returns that
  // thread, for the caller to join or detach. Once.
  Thread Run(const char* name, std::function<void()> body);
  // Ends the thread without running anything and joins it. Idempotent.
  void Release();

 private:
  struct Handoff;
  ReservedThread(std::shared_ptr<Handoff> handoff, Thread thread)
      : handoff_(std::move(handoff)), thread_(std::move(thread)) {}

  std::shared_ptr<Handoff> handoff_;
  Thread thread_;
};

}  // namespace shmgrpc::shm

#endif  // SHMGRPC_SHM_THREAD_H_
