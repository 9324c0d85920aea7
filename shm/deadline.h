// Deadlines on the monotonic clock.
//
// APIs take deadlines as absl::Time (the wall clock, as gRPC's are) or as
// timeouts; a wait turns one into a point on the monotonic clock once, so
// that a step of the wall clock neither stretches nor cuts it. A deadline or
// timeout a year or more away (InfiniteFuture and InfiniteDuration too) is
// none: kNoDeadline, which no clock reaches and whose computation overflows
// nothing.
#ifndef SHMGRPC_SHM_DEADLINE_H_
#define SHMGRPC_SHM_DEADLINE_H_

#include <chrono>

#include "absl/time/time.h"

namespace shmgrpc::shm {

using SteadyTime = std::chrono::steady_clock::time_point;
inline constexpr SteadyTime kNoDeadline = SteadyTime::max();

// `timeout` from now (none if negative: now).
SteadyTime SteadyDeadlineAfter(absl::Duration timeout);
// `deadline` (wall clock) as a point on the monotonic clock.
SteadyTime SteadyDeadline(absl::Time deadline);

}  // namespace shmgrpc::shm

#endif  // SHMGRPC_SHM_DEADLINE_H_
