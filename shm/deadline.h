// Deadlines for waits.
//
// APIs take deadlines as absl::Time (the wall clock, as gRPC's are) or as
// timeouts; a wait turns one into a point on the monotonic clock once, so
// that a step of the wall clock neither stretches nor cuts it. A deadline or
// timeout a year or more away (InfiniteFuture and InfiniteDuration too) is
// none: kNoDeadline, which no clock reaches and whose computation overflows
// nothing.
//
// Waits on a std::timed_mutex or std::condition_variable are the exception
// (SystemWaitDeadline): libstdc++ waits for a steady-clock point with
// pthread_mutex_clocklock / pthread_cond_clockwait, which GCC 12's
// ThreadSanitizer does not intercept (it then reports every unlock as of an
// unlocked mutex), so those wait for a system-clock point, as the deadline
// is given.
#ifndef SHMGRPC_SHM_DEADLINE_H_
#define SHMGRPC_SHM_DEADLINE_H_

#include <chrono>
#include <optional>

#include "absl/time/time.h"

namespace shmgrpc::shm {

using SteadyTime = std::chrono::steady_clock::time_point;
inline constexpr SteadyTime kNoDeadline = SteadyTime::max();

// `timeout` from now (none if negative: now).
SteadyTime SteadyDeadlineAfter(absl::Duration timeout);
// `deadline` (wall clock) as a point on the monotonic clock.
SteadyTime SteadyDeadline(absl::Time deadline);
// `deadline` for a mutex or condition-variable wait (see above); nullopt
// when there is none.
std::optional<std::chrono::system_clock::time_point> SystemWaitDeadline(
    absl::Time deadline);

}  // namespace shmgrpc::shm

#endif  // SHMGRPC_SHM_DEADLINE_H_
