// RetryThrottle: the service config's "retryThrottling" for shm calls, kept
// as gRPC keeps it: one throttle per server for the whole process, so that
// every channel to one server (an app making a channel per call, too) draws
// on the same tokens.
//
// Counted in thousandths of a token, as gRPC counts them: a failed attempt
// takes one token, a success gives back `token_ratio`, and a retry may follow
// a failure while more than half of `max_tokens` are left. A channel that
// configures other numbers for the same server replaces that server's
// throttle with one starting as full, in proportion, as the old one was, and
// throttles handed out before follow the replacement. Thread-safe.
#ifndef SHMGRPC_TRANSPORT_RETRY_THROTTLE_H_
#define SHMGRPC_TRANSPORT_RETRY_THROTTLE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

namespace shmgrpc::transport {

class RetryThrottle {
 public:
  // The process's throttle for `server` (any string naming it alike for
  // every channel) with these numbers, made or replaced as the comment on
  // top says.
  static std::shared_ptr<RetryThrottle> ForServer(const std::string& server,
                                                  double max_tokens,
                                                  double token_ratio);

  // A throttle of its own, `tokens_fraction` full (for tests and ForServer).
  RetryThrottle(double max_tokens, double token_ratio,
                double tokens_fraction = 1.0);
  RetryThrottle(const RetryThrottle&) = delete;
  RetryThrottle& operator=(const RetryThrottle&) = delete;

  // An attempt ended with a retryable failure: true if a retry may follow.
  bool RecordFailure();
  void RecordSuccess();

 private:
  RetryThrottle* Latest();  // this, or its newest replacement
  // Adds `delta` milli-tokens, kept within [0, max]; returns the new count.
  int64_t Add(int64_t delta);
  double FractionFull() const;

  const int64_t max_milli_tokens_;
  const int64_t milli_token_ratio_;
  std::atomic<int64_t> milli_tokens_;
  // Set once, under the process's registry lock; the shared_ptr keeps the
  // replacement alive for holders of this one.
  std::shared_ptr<RetryThrottle> replacement_owner_;
  std::atomic<RetryThrottle*> replacement_{nullptr};
};

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_RETRY_THROTTLE_H_
