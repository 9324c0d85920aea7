// The retry throttle's arithmetic (gRFC A6) and its one-per-server sharing.
#include "transport/retry_throttle.h"

#include <memory>

#include "gtest/gtest.h"

namespace shmgrpc::transport {
namespace {

TEST(RetryThrottleTest, FailuresTakeATokenSuccessesGiveBackTheRatio) {
  RetryThrottle throttle(4, 0.5);
  EXPECT_TRUE(throttle.RecordFailure());   // 3 left: more than half
  EXPECT_FALSE(throttle.RecordFailure());  // 2: not more than half
  throttle.RecordSuccess();                // 2.5
  EXPECT_FALSE(throttle.RecordFailure());  // 1.5
  EXPECT_FALSE(throttle.RecordFailure());  // 0.5
  EXPECT_FALSE(throttle.RecordFailure());  // 0, not below
  throttle.RecordSuccess();                // 0.5
  for (int i = 0; i < 100; ++i) throttle.RecordSuccess();  // 4, not above
  EXPECT_TRUE(throttle.RecordFailure());                   // 3
}

TEST(RetryThrottleTest, ChannelsToOneServerShareOneThrottle) {
  auto first = RetryThrottle::ForServer("/run/a.sock", 3, 1);
  auto second = RetryThrottle::ForServer("/run/a.sock", 3, 1);
  auto other = RetryThrottle::ForServer("/run/b.sock", 3, 1);
  EXPECT_EQ(first, second);
  EXPECT_NE(first, other);
  EXPECT_TRUE(first->RecordFailure());    // 2 of 3 left
  EXPECT_FALSE(second->RecordFailure());  // 1
  EXPECT_TRUE(other->RecordFailure());    // its own: 2
}

// Other numbers for the same server replace its throttle with one as full,
// in proportion, and holders of the old one follow the replacement.
TEST(RetryThrottleTest, OtherNumbersReplaceTheThrottleInProportion) {
  auto old_numbers = RetryThrottle::ForServer("/run/c.sock", 4, 1);
  EXPECT_TRUE(old_numbers->RecordFailure());  // 3 of 4
  auto new_numbers = RetryThrottle::ForServer("/run/c.sock", 8, 1);
  EXPECT_NE(new_numbers, old_numbers);         // 6 of 8: as full
  EXPECT_TRUE(old_numbers->RecordFailure());   // the new one's: 5 of 8
  EXPECT_FALSE(new_numbers->RecordFailure());  // 4: not more than half
  old_numbers->RecordSuccess();                // 5
  EXPECT_FALSE(new_numbers->RecordFailure());  // 4
  EXPECT_EQ(RetryThrottle::ForServer("/run/c.sock", 8, 1), new_numbers);
}

}  // namespace
}  // namespace shmgrpc::transport
