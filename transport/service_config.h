// ServiceConfig: what a channel's service config says that gRPC applies in
// its core, below the interceptors, where a call hijacked by the shm
// interceptor never goes: retry policies and per-method message limits.
// The shm client applies them itself (client_call.h).
//
// It reads the GRPC_ARG_SERVICE_CONFIG JSON with gRPC's rules: a
// methodConfig names methods as {"service", "method"}, a service alone, or
// {} for every method, the most specific name winning. retryPolicy:
// maxAttempts at least 2 and at most 5 (larger values are 5), both
// backoffs durations ("0.1s") above zero, backoffMultiplier above zero,
// retryableStatusCodes a non-empty list of names ("UNAVAILABLE") or numbers.
// A method with a "hedgingPolicy" is reported as such (the caller sends it
// plain). maxRequestMessageBytes / maxResponseMessageBytes: numbers (or
// numeric strings). Also "retryThrottling" {maxTokens, tokenRatio}
// (made into a RetryThrottle by the channel, retry_throttle.h). Other fields
// ("timeout", "waitForReady") are not read: gRPC 1.51 itself expired a method's
// timeout early here (a 1 s timeout failed a plain call after 1 ms, 2 s let a
// 0.5 s call through; upstream grpc/grpc#34547: such timeouts fire about a
// second early), so there is no behavior to match.
#ifndef SHMGRPC_TRANSPORT_SERVICE_CONFIG_H_
#define SHMGRPC_TRANSPORT_SERVICE_CONFIG_H_

#include <cstdint>
#include <map>
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
struct MethodConfig {
  const RetryPolicy* retry = nullptr;        // null: no retries
  bool hedged = false;                       // a hedgingPolicy applies
  std::optional<size_t> max_request_bytes;   // unset: the channel's limit
  std::optional<size_t> max_response_bytes;  // (the lower of both applies)
};

class ServiceConfig {
 public:
  // InvalidArgument (saying what) for bad JSON or a value gRPC would refuse.
  static absl::StatusOr<ServiceConfig> Parse(absl::string_view json);

  // `method` as "/package.Service/Method".
  MethodConfig For(absl::string_view method) const;
  // No methodConfig entry.
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
    std::optional<size_t> max_request_bytes, max_response_bytes;
  };
  static MethodConfig Of(const Entry& entry) {
    return {entry.retry ? &*entry.retry : nullptr, entry.hedged,
            entry.max_request_bytes, entry.max_response_bytes};
  }

  // Looked up by string_view (std::less<>): For() runs once per call and
  // allocates nothing.
  std::map<std::string, Entry, std::less<>> by_method_;   // "pkg.Svc/Method"
  std::map<std::string, Entry, std::less<>> by_service_;  // "pkg.Svc"
  std::optional<Entry> default_;                          // name {}
  std::optional<std::pair<double, double>> throttling_;
};

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_SERVICE_CONFIG_H_
