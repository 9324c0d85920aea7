// How a consumer waits for messages on its ring. Chosen per session.
//
//   notify   (default) spin up to an adaptive budget, then publish "asleep"
//            and block on the UDS doorbell. The producer rings (1 byte) only
//            when it sees the consumer asleep, so dense traffic is nearly
//            syscall-free and a quick reply never pays for a wake-up.
//   poll     spin forever; lowest latency, one busy core per waiting
//            consumer (it yields to runnable threads). No doorbells.
//   periodic sleep `period`, then drain; lowest CPU, latency up to `period`.
//            No doorbells.
//
// Spinning: the first `pause_spin` of every spin is CPU pauses only; after
// that each check calls sched_yield(). A yielding spinner costs a syscall per
// check but never keeps a runnable thread (often the one about to produce the
// message) off its core, and it keeps its vCPU from halting, so the wake-ups
// of the other threads on the call path stay cheap. Measured on the 2-vCPU
// reference VM (ab_bench, gRPC unary, 64 B): pause-only polling p50 40 us but
// p99 2.4 ms (spinners holding both cores for whole time slices), yielding
// polling p99 ~100 us; notify with a 100 us yielding spin p50 49 us vs 145 us
// with a 10 us pause-only spin.
#ifndef SHMGRPC_SHM_WAIT_OPTIONS_H_
#define SHMGRPC_SHM_WAIT_OPTIONS_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace shmgrpc::shm {

enum class WaitStrategy { kNotify, kPoll, kPeriodic };

struct WaitOptions {
  WaitStrategy strategy = WaitStrategy::kNotify;
  // notify: the spin budget starts at max_spin. After a sleep it returns to
  // max_spin if the message came within a few budgets (a near miss), and
  // halves (down to min_spin) when it came much later (slow peer, idle link).
  absl::Duration max_spin = absl::Microseconds(100);
  absl::Duration min_spin = absl::Microseconds(1);
  // notify: after a message of N MiB, spins last at least N * spin_per_mib
  // (at most 2 ms), whatever the adaptive budget, until one runs out: the
  // next frame after a large one comes only once both sides have passed
  // over its bytes, later than max_spin, and sleeping then costs two
  // wake-ups per round trip. Two extensions in a row that the next message
  // missed by less than 4x stop them for messages that large for 100 ms
  // (exchanges too slow to catch; an idle link does not count). 0: off.
  absl::Duration spin_per_mib = absl::Milliseconds(1);
  // notify: while the receiver's caller reports more than this many busy
  // streams (Endpoint::Receive; gRPC: calls on the session awaiting an
  // answer, ClientStats::busy_calls), a spin ends as soon as other threads took
  // more than half of it, and the waits of the next 1 ms do not spin: the
  // threads working on those streams keep the cores busy, and a spinner,
  // yielding or not, only takes turns from them (ab_bench 4 KiB, spin vs none,
  // calls/s at 16 callers 27k vs 37k, at 64 37–40k vs 42–44k; equal at 4; at
  // 1–2 the spin makes calls 1.3–4x faster). Calls that wait instead (long
  // polls) leave the cores idle and the spin on. 0: the number of CPUs this
  // process may run on.
  int max_busy_streams_for_spin = 0;
  // Part of each spin that pauses without yielding (see above).
  absl::Duration pause_spin = absl::Microseconds(2);
  // periodic: sleep between drains.
  absl::Duration period = absl::Microseconds(50);
  // poll: how often a spinning consumer checks that the peer is still there.
  absl::Duration liveness_check = absl::Milliseconds(1);
};

// "notify" | "poll" | "periodic".
absl::StatusOr<WaitStrategy> ParseWaitStrategy(absl::string_view name);
absl::string_view WaitStrategyName(WaitStrategy strategy);

}  // namespace shmgrpc::shm

#endif  // SHMGRPC_SHM_WAIT_OPTIONS_H_
