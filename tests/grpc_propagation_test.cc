// A call made onward from a handler with ClientContext::FromServerContext
// (or FromCallbackServerContext), as a middle tier in a chain of services
// makes it: gRPC gives the onward call the incoming call's deadline and
// cancels it when the incoming call is cancelled. The onward call here goes
// from a relay service in this process to echo_server, over a shm channel
// or a plain one, and must behave the same over both.
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <thread>

#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "shmgrpc.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_fixture.h"
#include "tests/echo_logic.h"
#include "tests/server_process.h"

namespace shmgrpc::test {
namespace {

// The onward call of the relay's one incoming call: how it ended, and a way
// for the test to end it when it does not end by itself.
class OnwardCall {
 public:
  // The relay made its onward call with `context`.
  void Started(grpc::ClientContext* context) {
    std::lock_guard<std::mutex> lock(mu_);
    context_ = context;
  }
  void Ended(const grpc::Status& status) {
    std::lock_guard<std::mutex> lock(mu_);
    context_ = nullptr;
    status_ = status;
    ended_at_ = absl::Now();
    ended_.notify_all();
  }
  // Its status once it ended within `timeout`, else nullopt.
  std::optional<grpc::Status> AwaitEnd(absl::Duration timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    ended_.wait_for(lock, absl::ToChronoMilliseconds(timeout),
                    [&] { return status_.has_value(); });
    return status_;
  }
  absl::Time ended_at() {
    std::lock_guard<std::mutex> lock(mu_);
    return ended_at_;
  }
  // Cancels an onward call still under way, so that a test that failed
  // does not leave the relay's handler waiting forever.
  void CancelIfRunning() {
    std::lock_guard<std::mutex> lock(mu_);
    if (context_ != nullptr) context_->TryCancel();
  }

 private:
  std::mutex mu_;
  std::condition_variable ended_;
  grpc::ClientContext* context_ = nullptr;  // while under way
  std::optional<grpc::Status> status_;
  absl::Time ended_at_;
};

// Sync relay: the onward call blocks the handler's thread.
class SyncRelay final : public EchoService::Service {
 public:
  SyncRelay(EchoService::Stub* onward, grpc::PropagationOptions propagation,
            OnwardCall* record)
      : onward_(onward), propagation_(propagation), record_(record) {}

  grpc::Status Unary(grpc::ServerContext* context, const EchoRequest* request,
                     EchoResponse* response) override {
    std::unique_ptr<grpc::ClientContext> onward_context =
        grpc::ClientContext::FromServerContext(*context, propagation_);
    record_->Started(onward_context.get());
    const grpc::Status status =
        onward_->Unary(onward_context.get(), *request, response);
    record_->Ended(status);
    return status;
  }

 private:
  EchoService::Stub* const onward_;
  const grpc::PropagationOptions propagation_;
  OnwardCall* const record_;
};

// Callback relay: the onward call is a callback call that finishes the
// incoming call's reactor.
class CallbackRelay final : public EchoService::CallbackService {
 public:
  CallbackRelay(EchoService::Stub* onward, grpc::PropagationOptions propagation,
                OnwardCall* record)
      : onward_(onward), propagation_(propagation), record_(record) {}

  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context,
                                  const EchoRequest* request,
                                  EchoResponse* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    std::shared_ptr<grpc::ClientContext> onward_context =
        grpc::ClientContext::FromCallbackServerContext(*context, propagation_);
    record_->Started(onward_context.get());
    onward_->async()->Unary(
        onward_context.get(), request, response,
        [this, reactor, onward_context](grpc::Status status) mutable {
          record_->Ended(status);
          // The context (which holds a reference to the onward channel)
          // goes before the incoming call ends: once it has ended, the test
          // may drop its own references, and in gRPC 1.51 a channel whose
          // last reference drops on a callback thread crashes the process
          // (grpc/grpc#32584; seen here as "assertion failed: prior > 0").
          onward_context.reset();
          reactor->Finish(status);
        });
    return reactor;
  }

 private:
  EchoService::Stub* const onward_;
  const grpc::PropagationOptions propagation_;
  OnwardCall* const record_;
};

struct Setup {
  bool onward_over_shm;
  bool callback_relay;
};

void PrintTo(const Setup& setup, std::ostream* out) {
  *out << (setup.onward_over_shm ? "shm" : "plain") << " onward channel, "
       << (setup.callback_relay ? "callback" : "sync") << " relay";
}

std::string SetupName(const ::testing::TestParamInfo<Setup>& info) {
  return std::string(info.param.onward_over_shm ? "Shm" : "Plain") +
         (info.param.callback_relay ? "CallbackRelay" : "SyncRelay");
}

class PropagationTest : public ::testing::TestWithParam<Setup> {
 protected:
  void SetUp() override {
    echo_server_ = std::make_unique<testing::ServerProcess>("sync");
    ASSERT_TRUE(echo_server_->status().ok()) << echo_server_->status();
    onward_channel_ =
        GetParam().onward_over_shm
            ? CreateChannel(echo_server_->target())
            : grpc::CreateChannel(echo_server_->target(),
                                  grpc::InsecureChannelCredentials());
    onward_stub_ = EchoService::NewStub(onward_channel_);
  }

  // Starts the relay in this process; the test calls it in-process.
  void StartRelay(grpc::PropagationOptions propagation) {
    if (GetParam().callback_relay) {
      relay_service_ = std::make_unique<CallbackRelay>(onward_stub_.get(),
                                                       propagation, &onward_);
    } else {
      relay_service_ = std::make_unique<SyncRelay>(onward_stub_.get(),
                                                   propagation, &onward_);
    }
    grpc::ServerBuilder builder;
    builder.RegisterService(relay_service_.get());
    relay_ = builder.BuildAndStart();
    ASSERT_NE(relay_, nullptr);
    relay_stub_ = EchoService::NewStub(
        relay_->InProcessChannel(grpc::ChannelArguments()));
  }

  void TearDown() override {
    onward_.CancelIfRunning();
    relay_stub_.reset();
    if (relay_ != nullptr) relay_->Shutdown();
    relay_.reset();
    onward_stub_.reset();
    onward_channel_.reset();
    ExpectNoShmHeldBy(getpid(), "the relay, its channel gone");
    if (echo_server_ != nullptr && echo_server_->status().ok()) {
      EXPECT_EQ(echo_server_->Stop(), 0) << "echo_server did not exit cleanly";
    }
  }

  // Calls through the relay, with the incoming call's deadline `deadline`.
  grpc::Status CallRelay(const EchoRequest& request, absl::Duration deadline,
                         EchoResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(In(deadline));
    return relay_stub_->Unary(&context, request, response);
  }

  std::unique_ptr<testing::ServerProcess> echo_server_;
  std::shared_ptr<grpc::Channel> onward_channel_;
  std::unique_ptr<EchoService::Stub> onward_stub_;
  OnwardCall onward_;
  std::unique_ptr<grpc::Service> relay_service_;
  std::unique_ptr<grpc::Server> relay_;
  std::unique_ptr<EchoService::Stub> relay_stub_;

  // On a shm onward channel: how many calls went plain because they inherit
  // from the relay's incoming call, and how many went over shm.
  void ExpectOnwardCalls(uint64_t inheriting, uint64_t on_shm) {
    if (!GetParam().onward_over_shm) return;
    const ClientStats stats = *GetChannelStats(onward_channel_.get());
    EXPECT_EQ(stats.calls_plain_inherits_server_call, inheriting);
    EXPECT_EQ(stats.calls_on_shm, on_shm);
  }
};

TEST_P(PropagationTest, TheOnwardCallHasTheIncomingCallsDeadline) {
  StartRelay(grpc::PropagationOptions());
  EchoRequest request;
  FillRequest(&request, 256, 1);
  EchoResponse response;
  const grpc::Status status = CallRelay(request, absl::Seconds(5), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(PayloadIntact(response));
  EXPECT_GT(response.deadline_remaining_ms(), 3000)
      << "echo_server saw no deadline (-1) or a wrong one";
  // Each plain hop carries the deadline as a grpc-timeout header, which
  // gRPC rounds up (to 10 ms between 1 and 10 s): two hops can add ~20 ms
  // (5009 ms was seen with the plain onward channel).
  EXPECT_LE(response.deadline_remaining_ms(), 5000 + 50);
  ExpectOnwardCalls(1, 0);
}

TEST_P(PropagationTest, TheOnwardCallEndsAtTheIncomingCallsDeadline) {
  StartRelay(grpc::PropagationOptions());
  EchoRequest request;
  request.set_hang(true);  // echo_server never answers
  EchoResponse response;
  const absl::Time start = absl::Now();
  const grpc::Status status =
      CallRelay(request, absl::Milliseconds(300), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  const std::optional<grpc::Status> onward = onward_.AwaitEnd(absl::Seconds(3));
  ASSERT_TRUE(onward.has_value()) << "the onward call outlived the deadline";
  EXPECT_EQ(onward->error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << onward->error_message();
  EXPECT_LT(onward_.ended_at() - start, absl::Milliseconds(300 + 250));
  ExpectOnwardCalls(1, 0);
}

TEST_P(PropagationTest, CancellingTheIncomingCallCancelsTheOnwardCall) {
  StartRelay(grpc::PropagationOptions());
  const int cancellations_before =
      FetchServerStats(echo_server_->target()).cancellations_seen();
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(20)));
  EchoRequest request;
  request.set_hang(true);
  EchoResponse response;
  const std::string target = echo_server_->target();
  // Once echo_server holds the onward call.
  std::thread canceller = CancelOnceAHandlerHangs(&context, target);
  const grpc::Status status = relay_stub_->Unary(&context, request, &response);
  canceller.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  const std::optional<grpc::Status> onward = onward_.AwaitEnd(absl::Seconds(3));
  ASSERT_TRUE(onward.has_value()) << "the onward call was not cancelled";
  EXPECT_EQ(onward->error_code(), grpc::StatusCode::CANCELLED)
      << onward->error_message();
  EXPECT_TRUE(WaitFor(
      [&] {
        return FetchServerStats(target).cancellations_seen() ==
               cancellations_before + 1;
      },
      absl::Seconds(3)))
      << "echo_server's handler did not see the cancellation";
  ExpectOnwardCalls(1, 0);
}

// Propagating neither deadline nor cancellation leaves nothing of the
// incoming call for the onward call to carry (census contexts are gRPC
// core's, which no shm call has), so it goes over shm when it can.
TEST_P(PropagationTest, WithoutDeadlineAndCancellationItIsAnOrdinaryCall) {
  StartRelay(grpc::PropagationOptions()
                 .disable_deadline_propagation()
                 .disable_cancellation_propagation());
  EchoRequest request;
  FillRequest(&request, 256, 1);
  EchoResponse response;
  const grpc::Status status = CallRelay(request, absl::Seconds(5), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.deadline_remaining_ms(), -1);
  EXPECT_EQ(response.peer_pid() != "", GetParam().onward_over_shm);
  ExpectOnwardCalls(0, 1);
}

INSTANTIATE_TEST_SUITE_P(OnwardChannels, PropagationTest,
                         ::testing::Values(Setup{false, false},
                                           Setup{false, true},
                                           Setup{true, false},
                                           Setup{true, true}),
                         SetupName);

}  // namespace
}  // namespace shmgrpc::test
