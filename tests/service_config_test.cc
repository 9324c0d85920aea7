// ServiceConfig reads a service config's retry policies and message limits
// with gRPC's rules: the most specific name wins, values are validated,
// maxAttempts is capped.
#include "transport/service_config.h"

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

TEST(ServiceConfigTest, ReadsEveryField) {
  absl::StatusOr<ServiceConfig> policies = ServiceConfig::Parse(
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

TEST(ServiceConfigTest, TheMostSpecificNameWins) {
  const std::string config = R"({"methodConfig": [
    {"name": [{}], "retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s",
      "maxBackoff": "1s", "backoffMultiplier": 1,
      "retryableStatusCodes": ["UNAVAILABLE"]}},
    {"name": [{"service": "p.S"}], "retryPolicy": {"maxAttempts": 3,
      "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 1,
      "retryableStatusCodes": ["UNAVAILABLE"]}},
    {"name": [{"service": "p.S", "method": "M"}], "hedgingPolicy": {}}]})";
  absl::StatusOr<ServiceConfig> policies = ServiceConfig::Parse(config);
  ASSERT_TRUE(policies.ok()) << policies.status();
  EXPECT_EQ(policies->For("/other.S/M").retry->max_attempts, 2);
  EXPECT_EQ(policies->For("/p.S/N").retry->max_attempts, 3);
  const MethodConfig hedged = policies->For("/p.S/M");
  EXPECT_TRUE(hedged.hedged);
  EXPECT_EQ(hedged.retry, nullptr);
}

TEST(ServiceConfigTest, MaxAttemptsAboveFiveIsFive) {
  absl::StatusOr<ServiceConfig> policies = ServiceConfig::Parse(
      Config(R"({"service": "p.S"})",
             R"({"maxAttempts": 9, "initialBackoff": "1s", "maxBackoff": "1s",
          "backoffMultiplier": 1, "retryableStatusCodes": ["ABORTED"]})"));
  ASSERT_TRUE(policies.ok()) << policies.status();
  EXPECT_EQ(policies->For("/p.S/M").retry->max_attempts, 5);
}

TEST(ServiceConfigTest, ThrottlingIsRead) {
  absl::StatusOr<ServiceConfig> policies = ServiceConfig::Parse(
      R"({"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.5}})");
  ASSERT_TRUE(policies.ok()) << policies.status();
  ASSERT_TRUE(policies->throttling().has_value());
  EXPECT_EQ(policies->throttling()->first, 10);
  EXPECT_EQ(policies->throttling()->second, 0.5);
  EXPECT_TRUE(policies->empty());
}

TEST(ServiceConfigTest, InvalidConfigsAreRefusedWithAReason) {
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
    absl::StatusOr<ServiceConfig> policies =
        ServiceConfig::Parse(Config(R"({"service": "p.S"})", policy));
    EXPECT_TRUE(absl::IsInvalidArgument(policies.status())) << policy;
  }
  EXPECT_FALSE(ServiceConfig::Parse("{not json").ok());
  EXPECT_FALSE(ServiceConfig::Parse(Config(R"({"method": "M"})", kPolicy)).ok())
      << "a method without its service";
  EXPECT_FALSE(ServiceConfig::Parse(
                   Config(R"({"service": "p.S"}, {"service": "p.S"})", kPolicy))
                   .ok())
      << "one name twice";
}

TEST(ServiceConfigTest, MessageLimitsAreNumbersOrNumericStrings) {
  absl::StatusOr<ServiceConfig> config = ServiceConfig::Parse(R"({
    "methodConfig": [{"name": [{"service": "p.S"}],
                      "maxRequestMessageBytes": 1000,
                      "maxResponseMessageBytes": "2000"}]})");
  ASSERT_TRUE(config.ok()) << config.status();
  const MethodConfig method = config->For("/p.S/M");
  EXPECT_EQ(method.max_request_bytes, 1000u);
  EXPECT_EQ(method.max_response_bytes, 2000u);
  EXPECT_EQ(method.retry, nullptr);
  EXPECT_FALSE(config->For("/q.S/M").max_request_bytes.has_value());
  EXPECT_FALSE(ServiceConfig::Parse(R"({"methodConfig": [{
    "name": [{"service": "p.S"}], "maxRequestMessageBytes": -1}]})")
                   .ok());
}

}  // namespace
}  // namespace shmgrpc::transport
