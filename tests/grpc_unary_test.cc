// Unary calls over shm between two real processes and a real grpc::Server,
// for every client API (sync, callback, CQ-async) against every server style.
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "shmgrpc.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_fixture.h"
#include "tests/echo_logic.h"
#include "tests/server_process.h"

namespace shmgrpc::test {
namespace {

class UnaryTest : public EchoStyleTest {};

const size_t kSizes[] = {0, 1, 4096, 1 << 20, (4 << 20) - 64};

TEST_P(UnaryTest, SyncUnaryEverySize) {
  for (size_t size : kSizes) {
    EchoRequest request;
    FillRequest(&request, size, static_cast<int64_t>(size));
    EchoResponse response;
    grpc::ClientContext context;
    grpc::Status status = stub_->Unary(&context, request, &response);
    ASSERT_TRUE(status.ok()) << size << ": " << status.error_message();
    EXPECT_EQ(response.payload().size(), size);
    EXPECT_TRUE(PayloadIntact(response)) << size;
    EXPECT_EQ(response.seq(), static_cast<int64_t>(size));
    EXPECT_EQ(response.peer_pid(), std::to_string(getpid()));
  }
  EXPECT_EQ(CallsOnShm(), std::size(kSizes));
}

TEST_P(UnaryTest, CallbackUnaryEverySize) {
  for (size_t size : kSizes) {
    EchoRequest request;
    FillRequest(&request, size, 7);
    EchoResponse response;
    grpc::ClientContext context;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status result;
    stub_->async()->Unary(&context, &request, &response,
                          [&](grpc::Status status) {
                            std::lock_guard<std::mutex> lock(mu);
                            result = std::move(status);
                            done = true;
                            cv.notify_one();
                          });
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(
        cv.wait_for(lock, std::chrono::seconds(10), [&] { return done; }));
    ASSERT_TRUE(result.ok()) << size << ": " << result.error_message();
    EXPECT_EQ(response.payload().size(), size);
    EXPECT_TRUE(PayloadIntact(response));
  }
  EXPECT_EQ(CallsOnShm(), std::size(kSizes));
}

TEST_P(UnaryTest, CompletionQueueAsyncUnaryEverySize) {
  grpc::CompletionQueue cq;
  for (size_t size : kSizes) {
    EchoRequest request;
    FillRequest(&request, size, 9);
    EchoResponse response;
    grpc::ClientContext context;
    grpc::Status status;
    auto reader = stub_->AsyncUnary(&context, request, &cq);
    reader->Finish(&response, &status, reinterpret_cast<void*>(1));
    void* tag;
    bool ok;
    ASSERT_EQ(cq.AsyncNext(
                  &tag, &ok,
                  std::chrono::system_clock::now() + std::chrono::seconds(10)),
              grpc::CompletionQueue::GOT_EVENT);
    EXPECT_TRUE(ok);
    ASSERT_TRUE(status.ok()) << size << ": " << status.error_message();
    EXPECT_EQ(response.payload().size(), size);
    EXPECT_TRUE(PayloadIntact(response));
  }
  EXPECT_EQ(CallsOnShm(), std::size(kSizes));
}

// A handler that cancels its own call (ServerContext::TryCancel): the
// client sees CANCELLED over shm as over plain gRPC, every server style.
TEST_P(UnaryTest, HandlerTryCancelEndsTheCallCancelled) {
  auto plain_stub = EchoService::NewStub(grpc::CreateChannel(
      server_->target(), grpc::InsecureChannelCredentials()));
  for (auto* stub : {stub_.get(), plain_stub.get()}) {
    EchoRequest request;
    FillRequest(&request, 100, 1);
    request.set_server_cancels(true);
    EchoResponse response;
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(10)));
    const grpc::Status status = stub->Unary(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED)
        << (stub == stub_.get() ? "shm: " : "plain: ")
        << status.error_message();
  }
  EXPECT_EQ(CallsOnShm(), 1u);
}

INSTANTIATE_TEST_SUITE_P(ServerStyles, UnaryTest,
                         ::testing::Values("sync", "callback", "async"));

}  // namespace
}  // namespace shmgrpc::test
