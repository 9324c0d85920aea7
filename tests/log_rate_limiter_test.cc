// LogRateLimiter: first event of a kind logged, then at most one per
// interval, each logged line counting what was dropped; kinds independent.
#include "transport/log_rate_limiter.h"

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace shmgrpc::transport {
namespace {

TEST(LogRateLimiterTest, OneLinePerKindPerIntervalCountingTheRest) {
  LogRateLimiter limiter(absl::Seconds(10));
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  uint64_t not_logged = 99;
  ASSERT_TRUE(limiter.ShouldLog("refused", t0, &not_logged));
  EXPECT_EQ(not_logged, 0u);
  for (int i = 1; i <= 500; ++i) {
    EXPECT_FALSE(
        limiter.ShouldLog("refused", t0 + absl::Milliseconds(i), &not_logged));
  }
  // Another kind is not held back by the first.
  EXPECT_TRUE(
      limiter.ShouldLog("frame type", t0 + absl::Seconds(1), &not_logged));
  EXPECT_EQ(not_logged, 0u);
  EXPECT_FALSE(
      limiter.ShouldLog("refused", t0 + absl::Seconds(9.9), &not_logged));
  ASSERT_TRUE(
      limiter.ShouldLog("refused", t0 + absl::Seconds(10), &not_logged));
  EXPECT_EQ(not_logged, 501u);
  EXPECT_EQ(LogRateLimiter::NotLoggedNote(not_logged),
            " (501 more since the last such line)");
  EXPECT_EQ(LogRateLimiter::NotLoggedNote(0), "");
  // The count restarts after each logged line.
  ASSERT_TRUE(
      limiter.ShouldLog("refused", t0 + absl::Seconds(30), &not_logged));
  EXPECT_EQ(not_logged, 0u);
}

}  // namespace
}  // namespace shmgrpc::transport
