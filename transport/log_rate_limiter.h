// LogRateLimiter: keeps a diagnostic that a peer can repeat at will (a
// refused handshake, a hostile descriptor, an unknown frame) from flooding
// stderr. The first event of a kind is logged; after that at most one per
// `interval`, and that line says how many events of its kind were not.
//
// Thread-safe.
#ifndef SHMGRPC_TRANSPORT_LOG_RATE_LIMITER_H_
#define SHMGRPC_TRANSPORT_LOG_RATE_LIMITER_H_

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "absl/time/time.h"

namespace shmgrpc::transport {

class LogRateLimiter {
 public:
  explicit LogRateLimiter(absl::Duration interval) : interval_(interval) {}

  // True when this event of `kind`, at `now`, is to be logged; then
  // `*not_logged` is how many events of that kind were dropped since the
  // last one logged.
  bool ShouldLog(const std::string& kind, absl::Time now, uint64_t* not_logged);

  // " (N more since the last such line)", or "" for N = 0: for the end of
  // the logged line.
  static std::string NotLoggedNote(uint64_t not_logged);

 private:
  struct KindState {
    absl::Time last_logged = absl::InfinitePast();
    uint64_t not_logged = 0;
  };
  const absl::Duration interval_;
  std::mutex mu_;
  std::map<std::string, KindState> kinds_;  // guarded by mu_
};

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_LOG_RATE_LIMITER_H_
