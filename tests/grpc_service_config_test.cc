// A channel's service config (retry policies, per-method message limits)
// applies to calls over shm as gRPC applies it on a plain channel. Each case
// runs on a plain channel and on an shm channel made with the same
// arguments, against one sync echo_server, and must end alike: status,
// message, and how many attempts the server saw; the shm calls stay on shm.
#include <signal.h>

#include <chrono>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "shmgrpc.h"
#include "tests/call_done.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_fixture.h"
#include "tests/echo_logic.h"
#include "tests/server_process.h"

namespace shmgrpc::test {
namespace {

// Unary retried on UNAVAILABLE and ABORTED, 4 attempts at most, quickly.
constexpr char kUnaryRetries[] = R"({"methodConfig": [{
  "name": [{"service": "shmgrpc.test.EchoService", "method": "Unary"}],
  "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.01s",
                  "maxBackoff": "0.05s", "backoffMultiplier": 2,
                  "retryableStatusCodes": ["UNAVAILABLE", "ABORTED"]}}]})";

// Any EchoService method retried on UNAVAILABLE, 3 attempts, quickly.
constexpr char kQuickRetries[] = R"({"methodConfig": [{
  "name": [{"service": "shmgrpc.test.EchoService"}],
  "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.05s",
                  "maxBackoff": "0.1s", "backoffMultiplier": 2,
                  "retryableStatusCodes": ["UNAVAILABLE"]}}]})";

// A shm channel and a plain one to `target`, with the same service config,
// for tests that compare the two.
struct ChannelPair {
  std::shared_ptr<grpc::Channel> shm;
  std::shared_ptr<grpc::Channel> plain;
};
ChannelPair ChannelsWithServiceConfig(const std::string& target,
                                      const char* service_config) {
  grpc::ChannelArguments args;
  args.SetServiceConfigJSON(service_config);
  return {CreateChannel(target, Options(), args),
          grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(),
                                    args)};
}

// A unary call by each client API: "sync", "callback" or "cq" (a CQ-async
// call, whose request the interceptor gets as a ByteBuffer).
grpc::Status UnaryBy(const std::string& api, EchoService::Stub* stub,
                     grpc::ClientContext* context, const EchoRequest& request,
                     EchoResponse* response) {
  if (api == "sync") return stub->Unary(context, request, response);
  if (api == "callback") {
    CallDone done;
    stub->async()->Unary(context, &request, response,
                         [&done](grpc::Status status) { done.Set(status); });
    if (!done.Await(absl::Seconds(30))) {
      return grpc::Status(grpc::StatusCode::INTERNAL, "no callback");
    }
    return done.status();
  }
  grpc::CompletionQueue cq;
  grpc::Status status;
  auto reader = stub->AsyncUnary(context, request, &cq);
  reader->Finish(response, &status, reinterpret_cast<void*>(1));
  void* tag;
  bool ok;
  if (cq.AsyncNext(&tag, &ok, In(absl::Seconds(30))) !=
      grpc::CompletionQueue::GOT_EVENT) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "no completion");
  }
  return status;
}

struct Outcome {
  grpc::StatusCode code;
  std::string message;
  int attempts_seen;  // by the server, on the attempt that answered
  bool over_shm;
};

class RetryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<testing::ServerProcess>("sync");
    ASSERT_TRUE(server_->status().ok()) << server_->status();
  }
  void TearDown() override {
    if (server_ != nullptr && server_->status().ok()) {
      EXPECT_EQ(server_->Stop(), 0) << "echo_server did not exit cleanly";
    }
  }

  std::shared_ptr<grpc::Channel> ChannelWith(bool shm,
                                             const std::string& config) {
    grpc::ChannelArguments args;
    args.SetServiceConfigJSON(config);
    return shm ? CreateChannel(server_->target(), Options(), args)
               : grpc::CreateCustomChannel(server_->target(),
                                           grpc::InsecureChannelCredentials(),
                                           args);
  }

  // A sync call whose first `fail` attempts fail as `request` says (its
  // attempt key made unique here).
  Outcome Call(const std::shared_ptr<grpc::Channel>& channel,
               EchoRequest request, int fail,
               absl::Duration deadline = absl::Seconds(10)) {
    FillRequest(&request, 1000, 1);
    request.set_attempt_key(absl::StrCat("key-", next_key_++));
    request.set_fail_attempts(fail);
    auto stub = EchoService::NewStub(channel);
    EchoResponse response;
    grpc::ClientContext context;
    context.set_deadline(In(deadline));
    const grpc::Status status = stub->Unary(&context, request, &response);
    return {status.error_code(), status.error_message(),
            response.attempts_seen(), response.peer_pid() != ""};
  }

  // The same case on a plain and an shm channel with `config`: the two end
  // alike. Returns the shm channel's outcome.
  Outcome ExpectAlike(const std::string& config, const EchoRequest& request,
                      int fail, const std::string& what) {
    const Outcome plain = Call(ChannelWith(false, config), request, fail);
    auto shm_channel = ChannelWith(true, config);
    const Outcome shm = Call(shm_channel, request, fail);
    EXPECT_EQ(shm.code, plain.code) << what << ": " << shm.message;
    EXPECT_EQ(shm.message, plain.message) << what;
    EXPECT_EQ(shm.attempts_seen, plain.attempts_seen) << what;
    EXPECT_FALSE(plain.over_shm);
    if (shm.code == grpc::StatusCode::OK) {
      EXPECT_TRUE(shm.over_shm) << what << ": went plain";
    }
    return shm;
  }

  std::unique_ptr<testing::ServerProcess> server_;
  int next_key_ = 0;
};

TEST_F(RetryTest, RetryableFailuresAreRetriedUpToMaxAttempts) {
  auto channel = ChannelWith(true, kUnaryRetries);
  for (int fail : {0, 2, 3, 5}) {
    const std::string what = absl::StrCat(fail, " failing attempts");
    const Outcome shm = ExpectAlike(kUnaryRetries, EchoRequest(), fail, what);
    if (fail < 4) {
      EXPECT_EQ(shm.code, grpc::StatusCode::OK) << what;
      EXPECT_EQ(shm.attempts_seen, fail + 1) << what;
    } else {
      EXPECT_EQ(shm.code, grpc::StatusCode::UNAVAILABLE) << what;
      EXPECT_EQ(shm.message, "attempt 4 fails") << what;
    }
  }
  // Counted on the channel that made them.
  EXPECT_EQ(Call(channel, EchoRequest(), 2).attempts_seen, 3);
  EXPECT_EQ(GetChannelStats(channel.get())->shm_retries, 2u);
  EXPECT_EQ(GetChannelStats(channel.get())->calls_on_shm, 1u);
}

TEST_F(RetryTest, RetriesDisabledByChannelArgumentAlike) {
  for (bool shm : {false, true}) {
    grpc::ChannelArguments args;
    args.SetServiceConfigJSON(kUnaryRetries);
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
    auto channel =
        shm ? CreateChannel(server_->target(), Options(), args)
            : grpc::CreateCustomChannel(
                  server_->target(), grpc::InsecureChannelCredentials(), args);
    const Outcome outcome = Call(channel, EchoRequest(), 1);
    EXPECT_EQ(outcome.code, grpc::StatusCode::UNAVAILABLE) << "shm=" << shm;
    EXPECT_EQ(outcome.message, "attempt 1 fails") << "shm=" << shm;
  }
}

TEST_F(RetryTest, NonRetryableCodesAndCommittedAttemptsAreFinal) {
  EchoRequest internal;
  internal.set_error_code(grpc::StatusCode::INTERNAL);
  Outcome shm = ExpectAlike(kUnaryRetries, internal, 1, "INTERNAL");
  EXPECT_EQ(shm.code, grpc::StatusCode::INTERNAL);
  EXPECT_EQ(shm.message, "attempt 1 fails");
  // Initial metadata before the failure commits the call: no retry.
  EchoRequest committed;
  committed.set_add_metadata(true);
  shm = ExpectAlike(kUnaryRetries, committed, 1, "committed");
  EXPECT_EQ(shm.code, grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(shm.message, "attempt 1 fails");
}

TEST_F(RetryTest, ServerPushbackDelaysOrStopsRetries) {
  EchoRequest stop;
  stop.set_retry_pushback_ms("-1");
  Outcome shm = ExpectAlike(kUnaryRetries, stop, 2, "pushback -1");
  EXPECT_EQ(shm.message, "attempt 1 fails");
  EchoRequest wait;
  wait.set_retry_pushback_ms("100");
  const absl::Time start = absl::Now();
  shm = Call(ChannelWith(true, kUnaryRetries), wait, 2);
  EXPECT_EQ(shm.code, grpc::StatusCode::OK) << shm.message;
  EXPECT_EQ(shm.attempts_seen, 3);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(200)) << "pushback ignored";
}

TEST_F(RetryTest, CallbackAndCompletionQueueCallsRetryToo) {
  auto channel = ChannelWith(true, kUnaryRetries);
  auto stub = EchoService::NewStub(channel);
  EchoRequest request;
  FillRequest(&request, 1000, 1);
  request.set_fail_attempts(2);
  for (const std::string api : {"callback", "cq"}) {
    request.set_attempt_key(api);
    EchoResponse response;
    grpc::ClientContext context;
    const grpc::Status status =
        UnaryBy(api, stub.get(), &context, request, &response);
    EXPECT_TRUE(status.ok()) << api << ": " << status.error_message();
    EXPECT_EQ(response.attempts_seen(), 3) << api;
    EXPECT_NE(response.peer_pid(), "") << api;
  }
  EXPECT_EQ(GetChannelStats(channel.get())->shm_retries, 4u);
}

TEST_F(RetryTest, DeadlineEndsTheCallDuringBackoff) {
  constexpr char kSlowBackoff[] = R"({"methodConfig": [{
    "name": [{"service": "shmgrpc.test.EchoService"}],
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "5s",
                    "maxBackoff": "5s", "backoffMultiplier": 1,
                    "retryableStatusCodes": ["UNAVAILABLE"]}}]})";
  for (bool shm : {false, true}) {
    auto channel = ChannelWith(shm, kSlowBackoff);
    const absl::Time start = absl::Now();
    const Outcome outcome =
        Call(channel, EchoRequest(), 5, absl::Milliseconds(300));
    EXPECT_EQ(outcome.code, grpc::StatusCode::DEADLINE_EXCEEDED)
        << "shm=" << shm << ": " << outcome.message;
    EXPECT_LT(absl::Now() - start, absl::Seconds(2)) << "shm=" << shm;
  }
}

// Up to 4 attempts of every method on UNAVAILABLE (10-50 ms backoffs), and
// retryThrottling with these numbers (JSON).
std::string ThrottledRetryConfig(absl::string_view max_tokens,
                                 absl::string_view token_ratio) {
  return absl::StrCat(R"({"methodConfig": [{
    "name": [{}],
    "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.01s",
                    "maxBackoff": "0.05s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]}}],
    "retryThrottling": {"maxTokens": )",
                      max_tokens, R"(, "tokenRatio": )", token_ratio, "}}");
}

TEST_F(RetryTest, ThrottledRetriesStopAlike) {
  // Two tokens: the first failure leaves one, not more than half, so no
  // call is retried.
  const std::string kThrottled = ThrottledRetryConfig("2", "0.1");
  for (int call = 0; call < 3; ++call) {
    const Outcome shm =
        ExpectAlike(kThrottled, EchoRequest(), 1, absl::StrCat("call ", call));
    EXPECT_EQ(shm.code, grpc::StatusCode::UNAVAILABLE);
  }
}

// gRPC keeps one throttle per server for the whole process, so channels to
// one server (here a new channel per call) share its tokens. Three tokens,
// retries while more than 1.5 are left: the first call's two failed
// attempts leave one token, so the next call's failure, on another channel,
// is not retried. Successes then earn tokens back (tokenRatio 1 each), as
// gRFC A6 says: after three, a failed attempt is retried again over shm.
// (gRPC 1.51's own channel never earned any back in this sequence, not even
// after 13 successes; shm calls keep to the gRFC.)
TEST_F(RetryTest, ThrottleTokensAreSharedByChannelsToOneServer) {
  const std::string kThrottled = ThrottledRetryConfig("3", "1");
  for (int fail : {5, 1}) {
    const Outcome shm = ExpectAlike(kThrottled, EchoRequest(), fail,
                                    absl::StrCat(fail, " failing attempts"));
    EXPECT_EQ(shm.code, grpc::StatusCode::UNAVAILABLE);
  }
  for (int call = 0; call < 3; ++call) {
    EXPECT_EQ(Call(ChannelWith(true, kThrottled), EchoRequest(), 0).code,
              grpc::StatusCode::OK);
  }
  const Outcome retried = Call(ChannelWith(true, kThrottled), EchoRequest(), 1);
  EXPECT_EQ(retried.code, grpc::StatusCode::OK) << retried.message;
  EXPECT_EQ(retried.attempts_seen, 2);
  EXPECT_TRUE(retried.over_shm);
}

TEST_F(RetryTest, PerMethodMessageLimitsApplyAlike) {
  // Lower than the channel's (4 MiB) for Unary: the lower one holds.
  constexpr char kLimits[] = R"({"methodConfig": [{
    "name": [{"service": "shmgrpc.test.EchoService", "method": "Unary"}],
    "maxRequestMessageBytes": 3000, "maxResponseMessageBytes": 2000}]})";
  for (const auto& [request_bytes, reply_bytes] :
       {std::pair{1000, 1000}, std::pair{1000, 2500}, std::pair{3500, 100}}) {
    const std::string what =
        absl::StrCat(request_bytes, " B request, ", reply_bytes, " B reply");
    Outcome outcomes[2];
    for (bool shm : {false, true}) {
      auto stub = EchoService::NewStub(ChannelWith(shm, kLimits));
      EchoRequest request;
      FillRequest(&request, request_bytes, 1);
      request.set_reply_bytes(reply_bytes);
      EchoResponse response;
      grpc::ClientContext context;
      context.set_deadline(In(absl::Seconds(10)));
      const grpc::Status status = stub->Unary(&context, request, &response);
      outcomes[shm] = {status.error_code(), status.error_message(), 0,
                       response.peer_pid() != ""};
    }
    EXPECT_EQ(outcomes[1].code, outcomes[0].code)
        << what << ": " << outcomes[1].message;
    if (request_bytes < 3000) {
      // Over shm (the request fits): the reply limit is shm's to enforce.
      EXPECT_EQ(outcomes[1].code, reply_bytes < 2000
                                      ? grpc::StatusCode::OK
                                      : grpc::StatusCode::RESOURCE_EXHAUSTED)
          << what;
    }
  }
}

TEST_F(RetryTest, HedgedMethodsAndRetriedStreamsGoPlain) {
  constexpr char kHedgedUnaryRetriedStreams[] = R"({"methodConfig": [
    {"name": [{"service": "shmgrpc.test.EchoService", "method": "Unary"}],
     "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "1s",
                       "nonFatalStatusCodes": ["UNAVAILABLE"]}},
    {"name": [{"service": "shmgrpc.test.EchoService"}],
     "retryPolicy": {"maxAttempts": 2, "initialBackoff": "0.01s",
                     "maxBackoff": "0.05s", "backoffMultiplier": 2,
                     "retryableStatusCodes": ["UNAVAILABLE"]}}]})";
  auto channel = ChannelWith(true, kHedgedUnaryRetriedStreams);
  const Outcome unary = Call(channel, EchoRequest(), 0);
  EXPECT_EQ(unary.code, grpc::StatusCode::OK) << unary.message;
  EXPECT_FALSE(unary.over_shm);
  auto stub = EchoService::NewStub(channel);
  grpc::ClientContext context;
  auto stream = stub->Bidi(&context);
  EchoRequest request;
  FillRequest(&request, 100, 1);
  EchoResponse response;
  ASSERT_TRUE(stream->Write(request));
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_EQ(response.peer_pid(), "");
  ASSERT_TRUE(stream->WritesDone());
  EXPECT_TRUE(stream->Finish().ok());
  const ClientStats stats = *GetChannelStats(channel.get());
  EXPECT_EQ(stats.calls_plain_retry_policy, 2u);
  EXPECT_EQ(stats.calls_on_shm, 0u);
}

// A server killed while it handles a call: the attempt fails UNAVAILABLE
// (its session closed), and the policy retries it on the link's next
// session, with the successor that took over the path (or over plain gRPC,
// if that session is not up yet); over plain gRPC the same call is retried
// on a new connection. Both end OK.
TEST(RetryRestartTest, CallsInFlightWhenTheServerIsKilledAreRetried) {
  constexpr char kRetryUnavailable[] = R"({"methodConfig": [{
    "name": [{"service": "shmgrpc.test.EchoService"}],
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "1s",
                    "maxBackoff": "2s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]}}]})";
  auto server = std::make_unique<testing::ServerProcess>("sync");
  ASSERT_TRUE(server->status().ok()) << server->status();
  const std::string socket_path = server->socket_path();
  auto [shm_channel, plain_channel] =
      ChannelsWithServiceConfig(server->target(), kRetryUnavailable);
  struct Result {
    grpc::Status status;
    EchoResponse response;
  };
  Result over_shm, over_plain;
  auto call = [](const std::shared_ptr<grpc::Channel>& channel,
                 Result* result) {
    EchoRequest request;
    FillRequest(&request, 4096, 5);
    request.set_delay_ms(500);  // in its handler when the server dies
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(20)));
    result->status = EchoService::NewStub(channel)->Unary(&context, request,
                                                          &result->response);
  };
  std::thread shm_caller(call, shm_channel, &over_shm);
  std::thread plain_caller(call, plain_channel, &over_plain);
  absl::SleepFor(absl::Milliseconds(200));
  server->Kill();
  server.reset();  // removes its socket files before the successor binds
  server = std::make_unique<testing::ServerProcess>(
      "sync", std::vector<std::string>{}, socket_path);
  ASSERT_TRUE(server->status().ok()) << server->status();
  shm_caller.join();
  plain_caller.join();
  EXPECT_TRUE(over_plain.status.ok()) << over_plain.status.error_message();
  EXPECT_TRUE(over_shm.status.ok()) << over_shm.status.error_message();
  EXPECT_TRUE(PayloadIntact(over_shm.response));
  const ClientStats stats = *GetChannelStats(shm_channel.get());
  EXPECT_GE(stats.shm_retries, 1u);
  // Answered on the successor's session, or over plain gRPC if a retry
  // came before the client had reconnected (jittered backoff; slow under
  // sanitizers).
  if (over_shm.response.peer_pid().empty()) {
    EXPECT_GE(stats.shm_retries_over_plain, 1u);
  }
  EXPECT_EQ(stats.calls_aborted_by_close, 0u);
  shm_channel.reset();
  plain_channel.reset();
}

// The same with no successor: every retry finds no session, so it is made
// over plain gRPC, where (as on the plain channel) it finds no server; the
// call ends UNAVAILABLE after maxAttempts, promptly, both ways.
TEST(RetryRestartTest, RetriesWithoutAServerEndUnavailable) {
  testing::ServerProcess server("sync");
  ASSERT_TRUE(server.status().ok()) << server.status();
  auto [shm_channel, plain_channel] =
      ChannelsWithServiceConfig(server.target(), kQuickRetries);
  grpc::Status statuses[2];
  auto call = [](const std::shared_ptr<grpc::Channel>& channel,
                 grpc::Status* status) {
    EchoRequest request;
    FillRequest(&request, 100, 1);
    request.set_delay_ms(500);
    EchoResponse response;
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(20)));
    *status =
        EchoService::NewStub(channel)->Unary(&context, request, &response);
  };
  std::thread shm_caller(call, shm_channel, &statuses[1]);
  std::thread plain_caller(call, plain_channel, &statuses[0]);
  absl::SleepFor(absl::Milliseconds(200));
  const absl::Time killed_at = absl::Now();
  server.Kill();
  shm_caller.join();
  plain_caller.join();
  EXPECT_LT(absl::Now() - killed_at, absl::Seconds(5));
  for (int shm : {0, 1}) {
    EXPECT_EQ(statuses[shm].error_code(), grpc::StatusCode::UNAVAILABLE)
        << "shm=" << shm << ": " << statuses[shm].error_message();
  }
  const ClientStats stats = *GetChannelStats(shm_channel.get());
  EXPECT_EQ(stats.shm_retries, 2u);
  EXPECT_EQ(stats.shm_retries_over_plain, 2u);
  EXPECT_EQ(stats.calls_aborted_by_close, 0u) << "ended by the policy";
}

// A call with wait_for_ready whose server is killed mid-call: its retries
// wait for a server instead of failing at once, and the successor, up a
// second later, answers. Over shm the retry finds no session, so it is made
// over plain gRPC, with the call's wait_for_ready (without it, all three
// attempts failed UNAVAILABLE within ~0.3 s) and its :authority.
TEST(RetryRestartTest, WaitForReadyRetriesWaitForTheSuccessor) {
  auto server = std::make_unique<testing::ServerProcess>("sync");
  ASSERT_TRUE(server->status().ok()) << server->status();
  const std::string socket_path = server->socket_path();
  auto [shm_channel, plain_channel] =
      ChannelsWithServiceConfig(server->target(), kQuickRetries);
  grpc::Status statuses[2];
  EchoResponse responses[2];
  auto call = [](const std::shared_ptr<grpc::Channel>& channel,
                 grpc::Status* status, EchoResponse* response) {
    EchoRequest request;
    FillRequest(&request, 100, 1);
    request.set_delay_ms(500);  // in its handler when the server dies
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(20)));
    context.set_wait_for_ready(true);
    context.set_authority("retried.example.com");
    *status = EchoService::NewStub(channel)->Unary(&context, request, response);
  };
  std::thread shm_caller(call, shm_channel, &statuses[1], &responses[1]);
  std::thread plain_caller(call, plain_channel, &statuses[0], &responses[0]);
  absl::SleepFor(absl::Milliseconds(200));
  server->Kill();
  server.reset();  // removes its socket files
  absl::SleepFor(absl::Seconds(1));
  server = std::make_unique<testing::ServerProcess>(
      "sync", std::vector<std::string>{}, socket_path);
  ASSERT_TRUE(server->status().ok()) << server->status();
  shm_caller.join();
  plain_caller.join();
  for (int shm : {0, 1}) {
    EXPECT_TRUE(statuses[shm].ok())
        << "shm=" << shm << ": " << statuses[shm].error_message();
    EXPECT_EQ(responses[shm].authority(), "retried.example.com")
        << "shm=" << shm;
  }
  const ClientStats stats = *GetChannelStats(shm_channel.get());
  EXPECT_EQ(stats.shm_retries_over_plain, 1u);
  shm_channel.reset();
  plain_channel.reset();
}

// True once the server has one call under way over shm.
bool FirstAttemptInItsHandler(const std::string& target) {
  return WaitFor([&] { return FetchServerStats(target).calls_active() == 1; },
                 absl::Seconds(5));
}

class RetryOverPlainTest : public ::testing::TestWithParam<std::string> {};

// A server that stops serving shm but keeps its plain port (SIGUSR1 to
// echo_server: ShmServer::Shutdown alone) while a call's first attempt is
// in its handler: the attempt ends on shm (UNAVAILABLE from the handler),
// and its retry, which finds no session, is made over plain gRPC and
// answers, as the plain channel's retry does. It failed "no shm session"
// before retries could go plain. With each client API.
TEST_P(RetryOverPlainTest, RetryAfterTheServersShmWentAwayIsMadeOverPlain) {
  testing::ServerProcess server("sync");
  ASSERT_TRUE(server.status().ok()) << server.status();
  grpc::ChannelArguments args;
  args.SetServiceConfigJSON(kUnaryRetries);
  auto call = [](const std::shared_ptr<grpc::Channel>& channel,
                 const std::string& key, EchoResponse* response) {
    EchoRequest request;
    FillRequest(&request, 1000, 1);
    request.set_delay_ms(400);
    request.set_attempt_key(key);
    request.set_fail_attempts(1);
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(20)));
    auto stub = EchoService::NewStub(channel);
    return UnaryBy(GetParam(), stub.get(), &context, request, response);
  };
  EchoResponse plain_response;
  const grpc::Status plain =
      call(grpc::CreateCustomChannel(server.target(),
                                     grpc::InsecureChannelCredentials(), args),
           "plain", &plain_response);
  ASSERT_TRUE(plain.ok()) << plain.error_message();
  EXPECT_EQ(plain_response.attempts_seen(), 2);

  auto shm_channel = CreateChannel(server.target(), Options(), args);
  EchoResponse shm_response;
  grpc::Status shm;
  std::thread caller([&] { shm = call(shm_channel, "shm", &shm_response); });
  EXPECT_TRUE(FirstAttemptInItsHandler(server.target()));
  EXPECT_EQ(kill(server.pid(), SIGUSR1), 0);
  caller.join();
  ASSERT_TRUE(shm.ok()) << shm.error_message();
  EXPECT_EQ(shm_response.attempts_seen(), 2);
  EXPECT_TRUE(PayloadIntact(shm_response));
  EXPECT_EQ(shm_response.peer_pid(), "") << "the answering attempt was plain";
  const ClientStats stats = *GetChannelStats(shm_channel.get());
  EXPECT_EQ(stats.calls_on_shm, 1u);
  EXPECT_EQ(stats.shm_retries, 1u);
  EXPECT_EQ(stats.shm_retries_over_plain, 1u);
  EXPECT_EQ(stats.sessions_drained, 1u);
}

INSTANTIATE_TEST_SUITE_P(ClientApis, RetryOverPlainTest,
                         ::testing::Values("sync", "callback", "cq"));

// The app's TryCancel ends a call whose retry is under way over plain gRPC
// at once, not when that attempt answers.
TEST(RetryRestartTest, CancelEndsARetryUnderWayOverPlain) {
  testing::ServerProcess server("sync");
  ASSERT_TRUE(server.status().ok()) << server.status();
  grpc::ChannelArguments args;
  args.SetServiceConfigJSON(kUnaryRetries);
  auto shm_channel = CreateChannel(server.target(), Options(), args);
  EchoRequest request;
  FillRequest(&request, 1000, 1);
  request.set_delay_ms(1000);  // every attempt
  request.set_attempt_key("cancelled");
  request.set_fail_attempts(1);
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(20)));
  EchoResponse response;
  grpc::Status status;
  const absl::Time start = absl::Now();
  std::thread caller([&] {
    status =
        EchoService::NewStub(shm_channel)->Unary(&context, request, &response);
  });
  EXPECT_TRUE(FirstAttemptInItsHandler(server.target()));
  EXPECT_EQ(kill(server.pid(), SIGUSR1), 0);
  // The first attempt fails at ~1 s; the plain one would answer at ~2 s.
  EXPECT_TRUE(WaitFor(
      [&] {
        return GetChannelStats(shm_channel.get())->shm_retries_over_plain == 1;
      },
      absl::Seconds(5)));
  context.TryCancel();
  caller.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED)
      << status.error_message();
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(1800));
}

}  // namespace
}  // namespace shmgrpc::test
