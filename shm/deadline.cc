#include "shm/deadline.h"

#include <algorithm>

#include "absl/time/clock.h"

namespace shmgrpc::shm {

SteadyTime SteadyDeadlineAfter(absl::Duration timeout) {
  if (timeout >= absl::Hours(24 * 365)) return kNoDeadline;
  return std::chrono::steady_clock::now() +
         absl::ToChronoNanoseconds(std::max(timeout, absl::ZeroDuration()));
}

SteadyTime SteadyDeadline(absl::Time deadline) {
  return SteadyDeadlineAfter(deadline - absl::Now());
}

std::optional<std::chrono::system_clock::time_point> SystemWaitDeadline(
    absl::Time deadline) {
  const absl::Duration left = deadline - absl::Now();
  if (SteadyDeadlineAfter(left) == kNoDeadline) return std::nullopt;
  return std::chrono::system_clock::now() +
         absl::ToChronoNanoseconds(std::max(left, absl::ZeroDuration()));
}

}  // namespace shmgrpc::shm
