// RetryPolicies reads a service config's retry policies with gRPC's rules:
// the most specific name wins, values are validated, maxAttempts is capped.
#include "transport/retry_policy.h"

#include <string>

#include "gtest/gtest.h"

namespace shmgrpc::transport {
namespace {

std::string Config(const std::string& names, const std::string& policy) {
  return R"({"methodConfig": [{"name": [)" + names + R"(], "retryPolicy": )" +
         policy + "}]}";
}

constexpr char kPolicy[] =
    R"({"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1.5s",
        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", 10]})";

TEST(RetryPolicyTest, ReadsEveryField) {
  absl::StatusOr<RetryPolicies> policies = RetryPolicies::Parse(
      Config(R"({"service": "p.S", "method": "M"})", kPolicy));
  ASSERT_TRUE(policies.ok()) << policies.status();
  const RetryPolicy* policy = policies->For("/p.S/M").retry;
  ASSERT_NE(policy, nullptr);
  EXPECT_EQ(policy->max_attempts, 3);
  EXPECT_EQ(policy->initial_backoff, absl::Milliseconds(100));
  EXPECT_EQ(policy->max_backoff, absl::Milliseconds(1500));
  EXPECT_EQ(policy->backoff_multiplier, 2);
  EXPECT_TRUE(policy->Retryable(grpc::StatusCode::UNAVAILABLE));
  EXPECT_TRUE(policy->Retryable(grpc::StatusCode::ABORTED));  // 10
  EXPECT_FALSE(policy->Retryable(grpc::StatusCode::INTERNAL));
  EXPECT_EQ(policies->For("/p.S/Other").retry, nullptr);
  EXPECT_EQ(policies->For("/q.S/M").retry, nullptr);
}

TEST(RetryPolicyTest, TheMostSpecificNameWins) {
  const std::string config = R"({"methodConfig": [
    {"name": [{}], "retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s",
      "maxBackoff": "1s", "backoffMultiplier": 1,
      "retryableStatusCodes": ["UNAVAILABLE"]}},
    {"name": [{"service": "p.S"}], "retryPolicy": {"maxAttempts": 3,
      "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1,
      "retryableStatusCodes": ["UNAVAILABLE"]}},
    {"name": [{"service": "p.S", "method": "M"}], "hedgingPolicy": {}}]})";
  absl::StatusOr<RetryPolicies> policies = RetryPolicies::Parse(config);
  ASSERT_TRUE(policies.ok()) << policies.status();
  EXPECT_EQ(policies->For("/other.S/M").retry->max_attempts, 2);
  EXPECT_EQ(policies->For("/p.S/N").retry->max_attempts, 3);
  const MethodRetry hedged = policies->For("/p.S/M");
  EXPECT_TRUE(hedged.hedged);
  EXPECT_EQ(hedged.retry, nullptr);
}

TEST(RetryPolicyTest, MaxAttemptsAboveFiveIsFive) {
  absl::StatusOr<RetryPolicies> policies = RetryPolicies::Parse(
      Config(R"({"service": "p.S"})",
             R"({"maxAttempts": 9, "initialBackoff": "1s", "maxBackoff": "1s",
          "backoffMultiplier": 1, "retryableStatusCodes": ["ABORTED"]})"));
  ASSERT_TRUE(policies.ok()) << policies.status();
  EXPECT_EQ(policies->For("/p.S/M").retry->max_attempts, 5);
}

TEST(RetryPolicyTest, ThrottlingIsRead) {
  absl::StatusOr<RetryPolicies> policies = RetryPolicies::Parse(
      R"({"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.5}})");
  ASSERT_TRUE(policies.ok()) << policies.status();
  ASSERT_TRUE(policies->throttling().has_value());
  EXPECT_EQ(policies->throttling()->first, 10);
  EXPECT_EQ(policies->throttling()->second, 0.5);
  EXPECT_TRUE(policies->empty());
  RetryThrottle throttle(4, 0.5);
  EXPECT_TRUE(throttle.RecordFailure());   // 3 left
  EXPECT_FALSE(throttle.RecordFailure());  // 2: not more than half
  throttle.RecordSuccess();                // 2.5
  EXPECT_FALSE(throttle.RecordFailure());  // 1.5
}

TEST(RetryPolicyTest, InvalidConfigsAreRefusedWithAReason) {
  const std::string bad_policies[] = {
      // maxAttempts below 2
      R"({"maxAttempts": 1, "initialBackoff": "1s", "maxBackoff": "1s",
          "backoffMultiplier": 1, "retryableStatusCodes": ["ABORTED"]})",
      // a backoff that is not a duration above 0
      R"({"maxAttempts": 2, "initialBackoff": "0s", "maxBackoff": "1s",
          "backoffMultiplier": 1, "retryableStatusCodes": ["ABORTED"]})",
      R"({"maxAttempts": 2, "initialBackoff": "1", "maxBackoff": "1s",
          "backoffMultiplier": 1, "retryableStatusCodes": ["ABORTED"]})",
      // multiplier 0
      R"({"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s",
          "backoffMultiplier": 0, "retryableStatusCodes": ["ABORTED"]})",
      // no codes, an unknown code
      R"({"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s",
          "backoffMultiplier": 1, "retryableStatusCodes": []})",
      R"({"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s",
          "backoffMultiplier": 1, "retryableStatusCodes": ["NOPE"]})",
  };
  for (const std::string& policy : bad_policies) {
    absl::StatusOr<RetryPolicies> policies =
        RetryPolicies::Parse(Config(R"({"service": "p.S"})", policy));
    EXPECT_TRUE(absl::IsInvalidArgument(policies.status())) << policy;
  }
  EXPECT_FALSE(RetryPolicies::Parse("{not json").ok());
  EXPECT_FALSE(RetryPolicies::Parse(Config(R"({"method": "M"})", kPolicy)).ok())
      << "a method without its service";
  EXPECT_FALSE(RetryPolicies::Parse(
                   Config(R"({"service": "p.S"}, {"service": "p.S"})", kPolicy))
                   .ok())
      << "one name twice";
}

}  // namespace
}  // namespace shmgrpc::transport
