// EchoFixture: a gtest fixture with an echo_server process (in the style the
// test names) and a shm channel + stub to it.
#ifndef SHMGRPC_TESTS_ECHO_FIXTURE_H_
#define SHMGRPC_TESTS_ECHO_FIXTURE_H_

#include <chrono>
#include <memory>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "grpcpp/grpcpp.h"
#include "shmgrpc.h"
#include "tests/echo.grpc.pb.h"
#include "tests/server_process.h"

namespace shmgrpc::test {

// The echo_server's shm counters, fetched over a plain channel (so asking
// does not change them). Fails the test on error.
inline ServerStatsReply FetchServerStats(const std::string& target) {
  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  auto stub = ServerStatsService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(5));
  ServerStatsReply reply;
  const grpc::Status status = stub->Get(&context, StatsRequest(), &reply);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return reply;
}

// Polls `condition` every 10 ms until it holds or `timeout` passes.
template <typename Condition>
bool WaitFor(Condition condition, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

// `Base` is ::testing::Test or ::testing::TestWithParam<std::string> (the
// parameter is then the server style).
template <typename Base>
class EchoFixtureBase : public Base {
 protected:
  virtual std::string ServerStyle() = 0;

  void SetUp() override {
    server_ = std::make_unique<testing::ServerProcess>(ServerStyle());
    ASSERT_TRUE(server_->status().ok()) << server_->status();
    channel_ = CreateChannel(server_->target());
    stub_ = EchoService::NewStub(channel_);
  }
  ClientStats Stats() { return *GetChannelStats(channel_.get()); }
  uint64_t CallsOnShm() { return Stats().calls_on_shm; }

  std::unique_ptr<testing::ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<EchoService::Stub> stub_;
};

// Parameterized by server style.
class EchoStyleTest
    : public EchoFixtureBase<::testing::TestWithParam<std::string>> {
 protected:
  std::string ServerStyle() override { return GetParam(); }
};

// Against a sync server.
class EchoTest : public EchoFixtureBase<::testing::Test> {
 protected:
  std::string ServerStyle() override { return "sync"; }
};

}  // namespace shmgrpc::test

#endif  // SHMGRPC_TESTS_ECHO_FIXTURE_H_
