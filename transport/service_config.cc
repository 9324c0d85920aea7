#include "transport/service_config.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace shmgrpc::transport {
namespace {

using google::protobuf::Struct;
using google::protobuf::Value;

constexpr const char* kStatusCodeNames[] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};
constexpr int kStatusCodes = 17;
// gRPC retries a call at most this often, whatever maxAttempts says.
constexpr int kMaxAttemptsLimit = 5;

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("service config: ", what));
}

const Value* Field(const Struct& object, const std::string& key) {
  auto it = object.fields().find(key);
  return it == object.fields().end() ? nullptr : &it->second;
}

const Struct* ObjectField(const Struct& object, const std::string& key) {
  const Value* value = Field(object, key);
  return value != nullptr && value->kind_case() == Value::kStructValue
             ? &value->struct_value()
             : nullptr;
}

std::string StringField(const Struct& object, const std::string& key) {
  const Value* value = Field(object, key);
  return value != nullptr && value->kind_case() == Value::kStringValue
             ? value->string_value()
             : "";
}

// A protobuf JSON Duration: decimal seconds and an "s", above zero.
absl::StatusOr<absl::Duration> PositiveDuration(const Struct& policy,
                                                const std::string& key) {
  const std::string text = StringField(policy, key);
  double seconds;
  if (text.size() < 2 || text.back() != 's' ||
      !absl::SimpleAtod(absl::string_view(text).substr(0, text.size() - 1),
                        &seconds) ||
      !(seconds > 0)) {
    return Invalid(absl::StrCat("retryPolicy.", key,
                                " must be a duration "
                                "above 0 such as \"0.1s\" (got \"",
                                text, "\")"));
  }
  return absl::Seconds(seconds);
}

absl::StatusOr<int> StatusCodeOf(const Value& value) {
  if (value.kind_case() == Value::kNumberValue) {
    const double number = value.number_value();
    if (number >= 0 && number < kStatusCodes && number == std::floor(number)) {
      return static_cast<int>(number);
    }
  } else if (value.kind_case() == Value::kStringValue) {
    for (int code = 0; code < kStatusCodes; ++code) {
      if (value.string_value() == kStatusCodeNames[code]) return code;
    }
  }
  return Invalid("retryPolicy.retryableStatusCodes has an unknown code");
}

// A message limit: a number, or a numeric string, of at least 0.
absl::StatusOr<std::optional<size_t>> MessageLimit(const Struct& config,
                                                   const std::string& key) {
  const Value* value = Field(config, key);
  if (value == nullptr) return std::nullopt;
  double bytes = -1;
  if (value->kind_case() == Value::kNumberValue) {
    bytes = value->number_value();
  } else if (value->kind_case() == Value::kStringValue) {
    if (!absl::SimpleAtod(value->string_value(), &bytes)) bytes = -1;
  }
  if (!(bytes >= 0) || bytes != std::floor(bytes)) {
    return Invalid(absl::StrCat(key, " must be a number of bytes"));
  }
  return static_cast<size_t>(bytes);
}

absl::StatusOr<RetryPolicy> ParseRetryPolicy(const Struct& json) {
  RetryPolicy policy;
  const Value* attempts = Field(json, "maxAttempts");
  if (attempts == nullptr || attempts->kind_case() != Value::kNumberValue ||
      attempts->number_value() < 2) {
    return Invalid("retryPolicy.maxAttempts must be a number of at least 2");
  }
  policy.max_attempts = static_cast<int>(
      std::min<double>(attempts->number_value(), kMaxAttemptsLimit));
  absl::StatusOr<absl::Duration> initial =
      PositiveDuration(json, "initialBackoff");
  if (!initial.ok()) return initial.status();
  absl::StatusOr<absl::Duration> max = PositiveDuration(json, "maxBackoff");
  if (!max.ok()) return max.status();
  policy.initial_backoff = *initial;
  policy.max_backoff = *max;
  const Value* multiplier = Field(json, "backoffMultiplier");
  if (multiplier == nullptr || multiplier->kind_case() != Value::kNumberValue ||
      !(multiplier->number_value() > 0)) {
    return Invalid("retryPolicy.backoffMultiplier must be a number above 0");
  }
  policy.backoff_multiplier = multiplier->number_value();
  const Value* codes = Field(json, "retryableStatusCodes");
  if (codes == nullptr || codes->kind_case() != Value::kListValue ||
      codes->list_value().values().empty()) {
    return Invalid("retryPolicy.retryableStatusCodes must be a non-empty list");
  }
  for (const Value& code : codes->list_value().values()) {
    absl::StatusOr<int> parsed = StatusCodeOf(code);
    if (!parsed.ok()) return parsed.status();
    policy.retryable_codes |= 1u << *parsed;
  }
  return policy;
}

}  // namespace

absl::StatusOr<ServiceConfig> ServiceConfig::Parse(absl::string_view json) {
  Struct root;
  const auto json_status =
      google::protobuf::util::JsonStringToMessage(std::string(json), &root);
  if (!json_status.ok()) return Invalid(json_status.ToString());
  ServiceConfig parsed_config;
  if (const Struct* throttling = ObjectField(root, "retryThrottling")) {
    const Value* tokens = Field(*throttling, "maxTokens");
    const Value* ratio = Field(*throttling, "tokenRatio");
    if (tokens == nullptr || tokens->kind_case() != Value::kNumberValue ||
        !(tokens->number_value() > 0) || ratio == nullptr ||
        ratio->kind_case() != Value::kNumberValue ||
        !(ratio->number_value() > 0)) {
      return Invalid("retryThrottling needs maxTokens and tokenRatio above 0");
    }
    parsed_config.throttling_.emplace(tokens->number_value(),
                                      ratio->number_value());
  }
  const Value* configs = Field(root, "methodConfig");
  if (configs == nullptr) return parsed_config;
  if (configs->kind_case() != Value::kListValue) {
    return Invalid("methodConfig must be a list");
  }
  for (const Value& config_value : configs->list_value().values()) {
    if (config_value.kind_case() != Value::kStructValue) {
      return Invalid("a methodConfig entry must be an object");
    }
    const Struct& config = config_value.struct_value();
    Entry entry;
    if (const Struct* retry = ObjectField(config, "retryPolicy")) {
      absl::StatusOr<RetryPolicy> policy = ParseRetryPolicy(*retry);
      if (!policy.ok()) return policy.status();
      entry.retry = *policy;
    }
    entry.hedged = ObjectField(config, "hedgingPolicy") != nullptr;
    for (auto [key, limit] :
         {std::pair{"maxRequestMessageBytes", &entry.max_request_bytes},
          std::pair{"maxResponseMessageBytes", &entry.max_response_bytes}}) {
      absl::StatusOr<std::optional<size_t>> bytes = MessageLimit(config, key);
      if (!bytes.ok()) return bytes.status();
      *limit = *bytes;
    }
    const Value* names = Field(config, "name");
    if (names == nullptr || names->kind_case() != Value::kListValue) continue;
    for (const Value& name_value : names->list_value().values()) {
      if (name_value.kind_case() != Value::kStructValue) {
        return Invalid("a methodConfig name must be an object");
      }
      const std::string service =
          StringField(name_value.struct_value(), "service");
      const std::string method =
          StringField(name_value.struct_value(), "method");
      if (service.empty()) {
        if (!method.empty()) {
          return Invalid("a methodConfig name with a method needs a service");
        }
        if (parsed_config.default_.has_value()) {
          return Invalid("two methodConfig entries for every method ({})");
        }
        parsed_config.default_ = entry;
      } else {
        auto& table = method.empty() ? parsed_config.by_service_
                                     : parsed_config.by_method_;
        const std::string key =
            method.empty() ? service : absl::StrCat(service, "/", method);
        if (!table.emplace(key, entry).second) {
          return Invalid(absl::StrCat("two methodConfig entries for ", key));
        }
      }
    }
  }
  return parsed_config;
}

MethodConfig ServiceConfig::For(absl::string_view method) const {
  if (absl::ConsumePrefix(&method, "/")) {
    if (auto it = by_method_.find(method); it != by_method_.end()) {
      return Of(it->second);
    }
    const size_t slash = method.find('/');
    if (slash != absl::string_view::npos) {
      auto it = by_service_.find(method.substr(0, slash));
      if (it != by_service_.end()) return Of(it->second);
    }
  }
  return default_ ? Of(*default_) : MethodConfig{};
}

}  // namespace shmgrpc::transport
