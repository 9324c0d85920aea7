// EchoBidiReactor: a callback-API Bidi stream on the echo service that writes
// `messages` requests, reads as many replies (each must carry its request's
// seq and an intact payload), then half-closes.
//
// It also records the longest StartWrite call: the callback API's writes must
// never block their caller, which is often gRPC's own callback thread.
#ifndef SHMGRPC_TESTS_ECHO_BIDI_REACTOR_H_
#define SHMGRPC_TESTS_ECHO_BIDI_REACTOR_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <utility>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "tests/call_done.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_logic.h"

namespace shmgrpc::test {

class EchoBidiReactor
    : public grpc::ClientBidiReactor<EchoRequest, EchoResponse> {
 public:
  // `fill(i, request)` builds request i (seq must be i) into a cleared
  // message. `corked`: initial metadata waits for the first write.
  // `metadata` is sent as the call's initial metadata.
  EchoBidiReactor(EchoService::Stub* stub, int messages, bool corked,
                  std::function<void(int, EchoRequest*)> fill,
                  const std::map<std::string, std::string>& metadata = {})
      : messages_(messages), fill_(std::move(fill)) {
    if (corked) context_.set_initial_metadata_corked(true);
    for (const auto& [key, value] : metadata) context_.AddMetadata(key, value);
    stub->async()->Bidi(&context_, this);
    StartRead(&response_);
    NextWrite();
    StartCall();
  }

  // Waits for OnDone; false if it did not come within `timeout`.
  bool Await(absl::Duration timeout) { return done_.Await(timeout); }
  // After Await() returned true.
  const grpc::Status& status() const { return done_.status(); }
  int received() const { return received_.load(); }
  int errors() const { return errors_; }
  // Any time (e.g. to report a hang).
  int sent() const { return sent_.load(); }
  // After Await() returned true.
  absl::Duration longest_start_write() const { return longest_start_write_; }

  void OnWriteDone(bool ok) override {
    if (ok) NextWrite();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    if (response_.seq() != received_ || !PayloadIntact(response_)) ++errors_;
    if (++received_ < messages_) StartRead(&response_);
  }
  void OnDone(const grpc::Status& status) override { done_.Set(status); }

 private:
  void NextWrite() {
    if (sent_ == messages_) {
      StartWritesDone();
      return;
    }
    request_.Clear();
    fill_(sent_, &request_);
    ++sent_;
    const absl::Time start = absl::Now();
    StartWrite(&request_);
    longest_start_write_ = std::max(longest_start_write_, absl::Now() - start);
  }

  grpc::ClientContext context_;
  EchoRequest request_;
  EchoResponse response_;
  const int messages_;
  const std::function<void(int, EchoRequest*)> fill_;
  std::atomic<int> sent_{0}, received_{0};
  int errors_ = 0;
  absl::Duration longest_start_write_ = absl::ZeroDuration();
  CallDone done_;
};

}  // namespace shmgrpc::test

#endif  // SHMGRPC_TESTS_ECHO_BIDI_REACTOR_H_
