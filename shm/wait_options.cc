#include "shm/wait_options.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace shmgrpc::shm {

absl::StatusOr<WaitStrategy> ParseWaitStrategy(absl::string_view name) {
  if (name == "notify") return WaitStrategy::kNotify;
  if (name == "poll") return WaitStrategy::kPoll;
  if (name == "periodic") return WaitStrategy::kPeriodic;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown wait strategy '", name, "' (want notify, poll or periodic)"));
}

absl::string_view WaitStrategyName(WaitStrategy strategy) {
  switch (strategy) {
    case WaitStrategy::kNotify:
      return "notify";
    case WaitStrategy::kPoll:
      return "poll";
    case WaitStrategy::kPeriodic:
      return "periodic";
  }
  return "unknown";
}

}  // namespace shmgrpc::shm
