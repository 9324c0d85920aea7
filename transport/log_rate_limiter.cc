#include "transport/log_rate_limiter.h"

#include "absl/strings/str_cat.h"

namespace shmgrpc::transport {

bool LogRateLimiter::ShouldLog(const std::string& kind, absl::Time now,
                               uint64_t* not_logged) {
  std::lock_guard<std::mutex> lock(mu_);
  KindState& state = kinds_[kind];
  if (now - state.last_logged < interval_) {
    ++state.not_logged;
    return false;
  }
  *not_logged = state.not_logged;
  state.not_logged = 0;
  state.last_logged = now;
  return true;
}

std::string LogRateLimiter::NotLoggedNote(uint64_t not_logged) {
  if (not_logged == 0) return "";
  return absl::StrCat(" (", not_logged, " more since the last such line)");
}

}  // namespace shmgrpc::transport
