// CallDone: the end of a callback-API call, for a test to wait on. The
// reactor calls Set() from OnDone; the test Await()s it, then reads status().
#ifndef SHMGRPC_TESTS_CALL_DONE_H_
#define SHMGRPC_TESTS_CALL_DONE_H_

#include <condition_variable>
#include <mutex>

#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"

namespace shmgrpc::test {

class CallDone {
 public:
  void Set(const grpc::Status& status) {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = status;
    done_ = true;
    cv_.notify_all();
  }
  // False if Set() did not come within `timeout`.
  bool Await(absl::Duration timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                        [&] { return done_; });
  }
  // After Await() returned true.
  const grpc::Status& status() const { return status_; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  grpc::Status status_;
};

}  // namespace shmgrpc::test

#endif  // SHMGRPC_TESTS_CALL_DONE_H_
