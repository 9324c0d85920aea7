// RetryPolicies: the retry policies of a channel's service config, so that
// unary calls over shm are retried as gRPC retries them on a plain channel.
//
// gRPC applies a service config's "retryPolicy" in its core, which a call
// hijacked by the shm interceptor never reaches. This reads the same JSON
// (the GRPC_ARG_SERVICE_CONFIG channel argument) with gRPC's rules: a
// methodConfig names methods as {"service", "method"}, a service alone, or
// {} for every method, the most specific name winning; maxAttempts is at
// least 2 and at most 5 (larger values are 5); both backoffs are durations
// ("0.1s") above zero; backoffMultiplier is above zero; retryableStatusCodes
// is a non-empty list of names ("UNAVAILABLE") or numbers. A method with a
// "hedgingPolicy" is reported as such: the caller sends it plain. Also
// "retryThrottling" {maxTokens, tokenRatio} (RetryThrottle).
#ifndef SHMGRPC_TRANSPORT_RETRY_POLICY_H_
#define SHMGRPC_TRANSPORT_RETRY_POLICY_H_

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/support/status.h"

namespace shmgrpc::transport {

struct RetryPolicy {
  int max_attempts = 0;  // 2..5
  absl::Duration initial_backoff;
  absl::Duration max_backoff;
  double backoff_multiplier = 0;
  uint32_t retryable_codes = 0;  // bit (1 << grpc::StatusCode)

  bool Retryable(grpc::StatusCode code) const {
    return (retryable_codes >> static_cast<int>(code)) & 1;
  }
};

// What a service config says about one method.
struct MethodRetry {
  const RetryPolicy* retry = nullptr;  // null: no retries
  bool hedged = false;                 // a hedgingPolicy applies
};

// gRPC's retry throttle: `max_tokens` tokens to start; a failed attempt
// takes one, a success gives back `token_ratio`; retries are allowed while
// more than half are left.
class RetryThrottle {
 public:
  RetryThrottle(double max_tokens, double token_ratio)
      : max_tokens_(max_tokens),
        token_ratio_(token_ratio),
        tokens_(max_tokens) {}
  // An attempt ended with a retryable failure: true if a retry may follow.
  bool RecordFailure();
  void RecordSuccess();

 private:
  const double max_tokens_;
  const double token_ratio_;
  std::mutex mu_;
  double tokens_;  // guarded by mu_
};

class RetryPolicies {
 public:
  // Policies from a service config; InvalidArgument (saying what) for JSON
  // or a policy gRPC would refuse.
  static absl::StatusOr<RetryPolicies> Parse(absl::string_view json);

  // `method` as "/package.Service/Method".
  MethodRetry For(absl::string_view method) const;
  bool empty() const {
    return by_method_.empty() && by_service_.empty() && !default_.has_value();
  }
  // From "retryThrottling", if the config has it.
  const std::optional<std::pair<double, double>>& throttling() const {
    return throttling_;
  }

 private:
  struct Entry {
    std::optional<RetryPolicy> retry;
    bool hedged = false;
  };
  static MethodRetry Of(const Entry& entry) {
    return {entry.retry ? &*entry.retry : nullptr, entry.hedged};
  }

  std::map<std::string, Entry> by_method_;   // "package.Service/Method"
  std::map<std::string, Entry> by_service_;  // "package.Service"
  std::optional<Entry> default_;             // name {}
  std::optional<std::pair<double, double>> throttling_;
};

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_RETRY_POLICY_H_
