#include "transport/retry_throttle.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>

namespace shmgrpc::transport {
namespace {

int64_t Milli(double tokens) { return std::llround(tokens * 1000); }

struct Registry {
  std::mutex mu;
  std::map<std::string, std::shared_ptr<RetryThrottle>> by_server;
};

Registry& TheRegistry() {
  static Registry* registry = new Registry;  // never destroyed: no exit race
  return *registry;
}

}  // namespace

RetryThrottle::RetryThrottle(double max_tokens, double token_ratio,
                             double tokens_fraction)
    : max_milli_tokens_(Milli(max_tokens)),
      milli_token_ratio_(Milli(token_ratio)),
      milli_tokens_(static_cast<int64_t>(
          tokens_fraction * static_cast<double>(Milli(max_tokens)))) {}

std::shared_ptr<RetryThrottle> RetryThrottle::ForServer(
    const std::string& server, double max_tokens, double token_ratio) {
  Registry& registry = TheRegistry();
  std::lock_guard<std::mutex> lock(registry.mu);
  std::shared_ptr<RetryThrottle>& entry = registry.by_server[server];
  if (entry != nullptr && entry->max_milli_tokens_ == Milli(max_tokens) &&
      entry->milli_token_ratio_ == Milli(token_ratio)) {
    return entry;
  }
  auto fresh = std::make_shared<RetryThrottle>(
      max_tokens, token_ratio, entry ? entry->FractionFull() : 1.0);
  if (entry != nullptr) {
    entry->replacement_owner_ = fresh;
    entry->replacement_.store(fresh.get(), std::memory_order_release);
  }
  entry = fresh;
  return fresh;
}

RetryThrottle* RetryThrottle::Latest() {
  RetryThrottle* latest = this;
  while (RetryThrottle* next =
             latest->replacement_.load(std::memory_order_acquire)) {
    latest = next;
  }
  return latest;
}

int64_t RetryThrottle::Add(int64_t delta) {
  int64_t now = milli_tokens_.load(std::memory_order_relaxed);
  int64_t next;
  do {
    next = std::clamp<int64_t>(now + delta, 0, max_milli_tokens_);
  } while (!milli_tokens_.compare_exchange_weak(now, next,
                                                std::memory_order_relaxed));
  return next;
}

double RetryThrottle::FractionFull() const {
  return static_cast<double>(milli_tokens_.load(std::memory_order_relaxed)) /
         static_cast<double>(max_milli_tokens_);
}

bool RetryThrottle::RecordFailure() {
  RetryThrottle* latest = Latest();
  return latest->Add(-1000) > latest->max_milli_tokens_ / 2;
}

void RetryThrottle::RecordSuccess() {
  RetryThrottle* latest = Latest();
  latest->Add(latest->milli_token_ratio_);
}

}  // namespace shmgrpc::transport
