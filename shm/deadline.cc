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

}  // namespace shmgrpc::shm
