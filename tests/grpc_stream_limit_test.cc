// The server's limit of concurrent streams per session
// (Options::max_concurrent_streams), seen from a real shm channel: the
// channel keeps to the limit the server advertised and sends its calls past
// it over plain gRPC, and however calls end (status, cancel, deadline) its
// count never runs ahead of the server's, so the server refuses none of its
// streams. (A client ignoring the limit: grpc_protocol_test.)
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "shmgrpc.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_fixture.h"
#include "tests/echo_logic.h"

namespace shmgrpc::test {
namespace {

// A bidi stream left open after one echo, and whether that echo came over
// shm (the server-verified peer pid comes only with shm).
struct OpenBidi {
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<grpc::ClientReaderWriter<EchoRequest, EchoResponse>> stream;
  bool over_shm = false;
};

OpenBidi OpenBidiWithOneEcho(EchoService::Stub* stub) {
  OpenBidi bidi;
  bidi.context = std::make_unique<grpc::ClientContext>();
  bidi.context->set_deadline(In(absl::Seconds(20)));
  bidi.stream = stub->Bidi(bidi.context.get());
  EchoRequest request;
  FillRequest(&request, 64, 1);
  EchoResponse response;
  EXPECT_TRUE(bidi.stream->Write(request));
  EXPECT_TRUE(bidi.stream->Read(&response));
  EXPECT_TRUE(PayloadIntact(response));
  bidi.over_shm = response.peer_pid() != "";
  return bidi;
}

void CloseBidi(OpenBidi& bidi) {
  ASSERT_TRUE(bidi.stream->WritesDone());
  const grpc::Status status = bidi.stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
}

// A server allowing two streams per session.
class StreamLimitTest : public EchoTest {
 protected:
  std::vector<std::string> ServerArgs() override {
    return {"--max_concurrent_streams=2"};
  }

  // Opens `count` bidi streams at once; returns how many went over shm.
  int OpenStreamsAndCountShm(int count) {
    std::vector<OpenBidi> streams;
    int on_shm = 0;
    for (int i = 0; i < count; ++i) {
      streams.push_back(OpenBidiWithOneEcho(stub_.get()));
      on_shm += streams.back().over_shm ? 1 : 0;
    }
    for (OpenBidi& bidi : streams) CloseBidi(bidi);
    return on_shm;
  }
};

// Five streams open at once against a limit of two: two on shm, three
// plain, all served; once they are closed, two fit on shm again (every slot
// came back).
TEST_F(StreamLimitTest, StreamsPastTheLimitGoPlain) {
  EXPECT_EQ(OpenStreamsAndCountShm(5), 2);
  EXPECT_EQ(Stats().calls_plain_stream_limit, 3u);
  EXPECT_EQ(Stats().calls_plain(), 3u) << "the total counts every reason";
  EXPECT_EQ(OpenStreamsAndCountShm(2), 2) << "slots not returned";
  EXPECT_EQ(Stats().calls_plain_stream_limit, 3u);
  EXPECT_EQ(FetchServerStats(server_->target()).streams_over_limit(), 0u);
}

// Eight threads end calls every way a call ends — a reply, a deadline, a
// cancel mid-stream, a stream closed normally — at a limit of 2: every call
// gets the status it should, the limit is reached (calls went plain for
// it), and the server never sees the channel past it. Afterwards both
// slots are free again.
TEST_F(StreamLimitTest, CallsEndingEveryWayNeverPassTheServersCount) {
  constexpr int kThreads = 8;
  constexpr int kCallsPerThread = 40;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCallsPerThread; ++i) {
        grpc::Status status;
        grpc::StatusCode expected = grpc::StatusCode::OK;
        switch ((t + i) % 4) {
          case 0: {  // a reply
            EchoResponse response;
            status = UnaryEcho(stub_.get(), 256, i, &response);
            break;
          }
          case 1: {  // a deadline
            EchoRequest request;
            request.set_hang(true);
            EchoResponse response;
            grpc::ClientContext context;
            context.set_deadline(In(absl::Milliseconds(5 + i % 20)));
            status = stub_->Unary(&context, request, &response);
            expected = grpc::StatusCode::DEADLINE_EXCEEDED;
            break;
          }
          case 2: {  // a cancel mid-stream
            OpenBidi bidi = OpenBidiWithOneEcho(stub_.get());
            bidi.context->TryCancel();
            status = bidi.stream->Finish();
            expected = grpc::StatusCode::CANCELLED;
            break;
          }
          case 3: {  // a stream closed normally
            OpenBidi bidi = OpenBidiWithOneEcho(stub_.get());
            EXPECT_TRUE(bidi.stream->WritesDone());
            status = bidi.stream->Finish();
            break;
          }
        }
        if (status.error_code() != expected) {
          ADD_FAILURE() << "thread " << t << " call " << i << ": "
                        << status.error_code() << " " << status.error_message();
          wrong.fetch_add(1);
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(wrong.load(), 0);
  const ClientStats stats = Stats();
  EXPECT_GT(stats.calls_on_shm, 0u);
  EXPECT_GT(stats.calls_plain_stream_limit, 0u) << "the limit was never hit";
  EXPECT_EQ(FetchServerStats(server_->target()).streams_over_limit(), 0u)
      << "the client opened a stream the server did not allow";
  // Every slot came back on both sides.
  EXPECT_TRUE(WaitFor(
      [&] { return FetchServerStats(server_->target()).calls_active() == 0; },
      absl::Seconds(5)));
  EXPECT_EQ(OpenStreamsAndCountShm(2), 2) << "slots not returned";
  EXPECT_EQ(Stats().calls_plain_stream_limit, stats.calls_plain_stream_limit);
}

}  // namespace
}  // namespace shmgrpc::test
