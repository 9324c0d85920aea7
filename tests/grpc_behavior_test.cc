// gRPC semantics over shm, two real processes: metadata, status details,
// deadlines, cancellation, size limits, concurrency, several client
// processes, non-protobuf calls, and hostile handshakes against a live server.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "shmgrpc.h"
#include "tests/call_done.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_bidi_reactor.h"
#include "tests/echo_fixture.h"
#include "tests/echo_logic.h"
#include "tests/peer_process.h"
#include "tests/server_process.h"
#include "transport/handshake.h"

namespace shmgrpc::test {
namespace {

using ::shmgrpc::testing::ServerProcess;

class BehaviorTest : public EchoTest {};

// A plain-gRPC stub on a connection of its own. gRPC's HTTP/2 transport
// drops a connection that carried metadata over its limit, and a call
// racing that teardown ends UNAVAILABLE; the limit tests compare shm with
// plain one call per connection so that they compare verdicts, not races.
std::unique_ptr<EchoService::Stub> FreshPlainStub(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return EchoService::NewStub(grpc::CreateCustomChannel(
      target, grpc::InsecureChannelCredentials(), args));
}

// An shm channel and a plain one with the same arguments, for the cases
// run side by side on both.
struct ChannelPair {
  std::shared_ptr<grpc::Channel> shm;
  std::shared_ptr<grpc::Channel> plain;
  const char* NameOf(const std::shared_ptr<grpc::Channel>& channel) const {
    return channel == shm ? "shm" : "plain";
  }
};

ChannelPair ShmAndPlainChannels(const std::string& target,
                                const grpc::ChannelArguments& args) {
  return {CreateChannel(target, Options(), args),
          grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(),
                                    args)};
}

TEST_F(BehaviorTest, MetadataRoundTripsBothWaysTextAndBinary) {
  EchoRequest request;
  FillRequest(&request, 10, 1);
  request.set_add_metadata(true);
  EchoResponse response;
  grpc::ClientContext context;
  const std::string binary("\x00\xff\x10", 3);
  context.AddMetadata("x-client-text", "hello");
  context.AddMetadata("x-client-bin", binary);
  grpc::Status status = stub_->Unary(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.request_metadata().at("x-client-text"), "hello");
  EXPECT_EQ(response.request_metadata().at("x-client-bin"), binary);
  const auto& initial = context.GetServerInitialMetadata();
  const auto& trailing = context.GetServerTrailingMetadata();
  ASSERT_EQ(initial.count("x-echo-initial"), 1u);
  EXPECT_EQ(initial.find("x-echo-initial")->second, "initial-value");
  EXPECT_EQ(initial.find("x-echo-initial-bin")->second,
            grpc::string_ref("\0\1\2", 3));
  ASSERT_EQ(trailing.count("x-echo-trailing"), 1u);
  EXPECT_EQ(trailing.find("x-echo-trailing")->second, "trailing-value");
  EXPECT_EQ(trailing.find("x-echo-trailing-bin")->second,
            grpc::string_ref("\xff\0\xfe", 3));
  EXPECT_EQ(Stats().calls_on_shm, 1u);
}

// The names of a process's threads, from /proc.
std::multiset<std::string> ThreadNames(pid_t pid) {
  std::multiset<std::string> names;
  const std::string tasks = absl::StrCat("/proc/", pid, "/task");
  for (const auto& task : std::filesystem::directory_iterator(tasks)) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    std::getline(comm, name);
    names.insert(name);
  }
  return names;
}

// shmgrpc's threads say what they are in `top -H`, `ps -L` and `perf`, on
// both sides.
TEST_F(BehaviorTest, ShmThreadsAreNamed) {
  EchoRequest request;
  FillRequest(&request, 10, 1);
  EchoResponse response;
  grpc::ClientContext context;
  ASSERT_TRUE(stub_->Unary(&context, request, &response).ok());
  ASSERT_EQ(Stats().calls_on_shm, 1u);
  const std::multiset<std::string> client = ThreadNames(getpid());
  EXPECT_EQ(client.count("shm-session"), 1u);
  EXPECT_EQ(client.count("shm-reconnect"), 1u);
  const std::multiset<std::string> server = ThreadNames(server_->pid());
  EXPECT_EQ(server.count("shm-accept"), 1u);
  EXPECT_EQ(server.count("shm-session"), 1u);
  EXPECT_EQ(server.count("shm-completion"), 1u);
}

// A server's threads for a session end with it: once a client process has
// gone, so have its session's threads (none hangs on a closed session).
TEST(ServerThreadsTest, EndWithTheirSession) {
  ServerProcess server("sync");
  ASSERT_TRUE(server.status().ok()) << server.status();
  for (int i = 0; i < 3; ++i) {
    // A separate executable (fork after gRPC started is unsupported).
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const std::string binary = testing::RunfilePath("tests/echo_client");
      const std::string target = "--target=" + server.target();
      execl(binary.c_str(), binary.c_str(), target.c_str(), "--calls=1",
            "--expect=shm", static_cast<char*>(nullptr));
      _exit(127);
    }
    EXPECT_EQ(testing::WaitPeer(pid), 0);
  }
  EXPECT_TRUE(WaitFor(
      [&] {
        const std::multiset<std::string> names = ThreadNames(server.pid());
        return names.count("shm-completion") == 0 &&
               names.count("shm-session") == 0 &&
               names.count("shm-handshake") == 0;
      },
      absl::Seconds(5)))
      << "session threads outlived their sessions";
  EXPECT_EQ(FetchServerStats(server.target()).sessions_closed(), 3u);
}

// Handlers see a user-agent on shm calls as on plain ones (there was none),
// with the channel's prefix and suffix, and "shmgrpc" where a plain call
// names its transport; one the app puts in its metadata is replaced, as
// gRPC replaces it.
TEST_F(BehaviorTest, UserAgentNamesTheClientAndShm) {
  grpc::ChannelArguments args;
  args.SetUserAgentPrefix("myapp/1.0");
  args.SetString(GRPC_ARG_SECONDARY_USER_AGENT_STRING, "build/7");
  ChannelPair channels = ShmAndPlainChannels(server_->target(), args);
  std::string user_agents[2];
  for (int i = 0; i < 2; ++i) {
    auto stub = EchoService::NewStub(i == 0 ? channels.shm : channels.plain);
    EchoRequest request;
    FillRequest(&request, 10, 1);
    request.set_add_metadata(true);
    EchoResponse response;
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(10)));
    context.AddMetadata("user-agent", "ignored/1");  // gRPC sends its own
    ASSERT_TRUE(stub->Unary(&context, request, &response).ok());
    EXPECT_EQ(response.peer_pid() != "", i == 0);
    user_agents[i] = response.request_metadata().at("user-agent");
  }
  const std::string common =
      absl::StrCat("myapp/1.0 grpc-c++/", grpc::Version(), " grpc-c/",
                   grpc_version_string());
  EXPECT_EQ(user_agents[0], common + " (linux; shmgrpc) build/7");
  EXPECT_EQ(user_agents[1], common + " (linux; chttp2) build/7");
}

// Initial metadata a handler sends before any message reaches the client
// at once: WaitForInitialMetadata returns while the handler still sleeps,
// over shm as over plain.
TEST_F(BehaviorTest, EarlyInitialMetadataArrivesBeforeAnyMessage) {
  auto plain_stub = FreshPlainStub(server_->target());
  for (auto* stub : {stub_.get(), plain_stub.get()}) {
    const char* which = stub == stub_.get() ? "shm" : "plain";
    EchoRequest request;
    FillRequest(&request, 10, 1);
    request.set_add_metadata(true);
    request.set_delay_ms(1000);
    request.set_reply_count(1);
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(10)));
    const absl::Time start = absl::Now();
    auto reader = stub->ServerStream(&context, request);
    reader->WaitForInitialMetadata();
    EXPECT_LT(absl::Now() - start, absl::Milliseconds(700)) << which;
    const auto& initial = context.GetServerInitialMetadata();
    ASSERT_EQ(initial.count("x-echo-early"), 1u) << which;
    EXPECT_EQ(initial.find("x-echo-early")->second, "before-any-reply");
    EchoResponse response;
    EXPECT_TRUE(reader->Read(&response)) << which;
    EXPECT_FALSE(reader->Read(&response)) << which;
    EXPECT_TRUE(reader->Finish().ok()) << which;
  }
  EXPECT_EQ(Stats().calls_on_shm, 1u);
}

// Request metadata larger than Options::max_shm_metadata_bytes (4 KiB) goes
// plain, so gRPC's own limit decides it exactly as without shm: the same
// status on the shm channel as on a plain one, for sizes below, between and
// above gRPC's quirky ~6-8 KiB limit. (Over shm alone, up to 64 KiB used to
// pass and more failed INTERNAL, so a call could work on shm and fail on the
// fallback path, or fail differently.)
TEST_F(BehaviorTest, LargeRequestMetadataGetsGrpcsOwnVerdict) {
  auto call = [](EchoService::Stub* stub, size_t metadata_bytes) {
    EchoRequest request;
    FillRequest(&request, 10, 1);
    EchoResponse response;
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(5)));
    context.AddMetadata("x-big", std::string(metadata_bytes, 'a'));
    return stub->Unary(&context, request, &response).error_code();
  };
  // One oversize call per connection: gRPC's HTTP/2 server then drops the
  // connection, and a call racing that teardown ends UNAVAILABLE (plain
  // gRPC's own behaviour, with or without shm).
  for (size_t bytes : {2000, 6000, 20000}) {
    const grpc::StatusCode over_shm = call(stub_.get(), bytes);
    EXPECT_EQ(over_shm, call(FreshPlainStub(server_->target()).get(), bytes))
        << bytes << " bytes of metadata";
    if (bytes == 20000) {
      EXPECT_EQ(over_shm, grpc::StatusCode::RESOURCE_EXHAUSTED);
    }
  }
  const ClientStats stats = Stats();
  EXPECT_EQ(stats.calls_on_shm, 1u);  // the 2000-byte call
  EXPECT_EQ(stats.calls_plain_large_metadata, 2u);
}

// A corked stream's metadata comes after the call was hijacked: too large
// for a default gRPC server, it ends RESOURCE_EXHAUSTED as it would there.
TEST_F(BehaviorTest, CorkedStreamWithOversizeMetadataIsResourceExhausted) {
  EchoBidiReactor reactor(
      stub_.get(), 3, /*corked=*/true,
      [](int i, EchoRequest* request) { FillRequest(request, 10, i); },
      {{"x-big", std::string(20000, 'a')}});
  ASSERT_TRUE(reactor.Await(absl::Seconds(10))) << "the stream hung";
  EXPECT_EQ(reactor.status().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << reactor.status().error_message();
  EXPECT_EQ(reactor.received(), 0);
  // It was hijacked before its metadata was known: refused by shmgrpc.
  EXPECT_EQ(Stats().calls_on_shm, 1u);
  EXPECT_EQ(Stats().calls_plain_large_metadata, 0u);
}

// Reply metadata is judged by the receiving client's GRPC_ARG_MAX_METADATA_SIZE
// (8 KiB by default) as a plain channel judges it: fine at 2 and 6 KB,
// RESOURCE_EXHAUSTED at 9 and 20 KB, initial or trailing; the same status
// on shm and plain channels. (shm used to pass up to 64 KiB.)
TEST_F(BehaviorTest, LargeReplyMetadataGetsTheClientsLimit) {
  auto call = [](EchoService::Stub* stub, bool trailing, uint32_t bytes) {
    EchoRequest request;
    FillRequest(&request, 10, 1);
    if (trailing) {
      request.set_reply_trailing_metadata_bytes(bytes);
    } else {
      request.set_reply_initial_metadata_bytes(bytes);
    }
    EchoResponse response;
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(5)));
    return stub->Unary(&context, request, &response).error_code();
  };
  for (bool trailing : {false, true}) {
    for (uint32_t bytes : {2000, 6000, 9000, 20000}) {
      const grpc::StatusCode over_shm = call(stub_.get(), trailing, bytes);
      EXPECT_EQ(over_shm,
                call(FreshPlainStub(server_->target()).get(), trailing, bytes))
          << (trailing ? "trailing " : "initial ") << bytes;
      EXPECT_EQ(over_shm, bytes < 8000 ? grpc::StatusCode::OK
                                       : grpc::StatusCode::RESOURCE_EXHAUSTED)
          << (trailing ? "trailing " : "initial ") << bytes;
    }
  }
  EXPECT_EQ(Stats().calls_on_shm, 8u);
  // The refused calls left nothing behind on the server.
  EXPECT_TRUE(WaitFor(
      [&] {
        const ServerStatsReply stats = FetchServerStats(server_->target());
        return stats.calls_active() == 0 && stats.blocks_in_use() == 0;
      },
      absl::Seconds(5)));
}

// gRPC aborts the process when an application adds illegal metadata to a
// plain call; over shm the call fails INTERNAL instead, and the server (which
// used to abort on it) keeps serving.
TEST_F(BehaviorTest, IllegalMetadataFailsTheCallNotAProcess) {
  for (const char* key : {"X-Upper", "x bad"}) {
    EchoRequest request;
    FillRequest(&request, 10, 1);
    EchoResponse response;
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(5)));
    context.AddMetadata(key, "v");
    const grpc::Status status = stub_->Unary(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL) << key;
  }
  ExpectServerStillServesShm(server_->target());
}

// An error status's message and details travel as trailers over HTTP/2 and
// count against the client's metadata limit: a plain channel turns a status
// with 7 KB of message and 7 KB of details into RESOURCE_EXHAUSTED, and so
// does shm now (it used to deliver it, and failed INTERNAL beyond its frame
// limit); small ones arrive intact, UTF-8 and newlines included.
TEST_F(BehaviorTest, LargeErrorStatusGetsTheClientsLimit) {
  for (size_t size : {10, 2000, 7000, 100000}) {
    std::string message = "caf\xc3\xa9 line1\nline2 ";
    message.resize(std::max(message.size(), size), 'x');
    const std::string details(size, '\xff');
    auto call = [&](EchoService::Stub* stub) {
      EchoRequest request;
      FillRequest(&request, 10, 1);
      request.set_error_code(grpc::StatusCode::FAILED_PRECONDITION);
      request.set_error_message(message);
      request.set_error_details(details);
      EchoResponse response;
      grpc::ClientContext context;
      context.set_deadline(In(absl::Seconds(5)));
      return stub->Unary(&context, request, &response);
    };
    const grpc::Status over_shm = call(stub_.get());
    EXPECT_EQ(over_shm.error_code(),
              call(FreshPlainStub(server_->target()).get()).error_code())
        << size;
    if (size <= 2000) {
      EXPECT_EQ(over_shm.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
      EXPECT_EQ(over_shm.error_message(), message);
      EXPECT_EQ(over_shm.error_details(), details);
    } else {
      EXPECT_EQ(over_shm.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
          << size;
    }
  }
  EXPECT_EQ(Stats().calls_on_shm, 4u);
}

// The server's own receive limit (ServerBuilder::SetMaxReceiveMessageSize)
// judges shm calls as it judges plain ones: injected calls pass through the
// server's message-size filter.
TEST(ServerLimitTest, ServerReceiveLimitAppliesOverShmAsOverPlain) {
  ServerProcess server("sync", {"--max_receive_bytes=1048576"});
  ASSERT_TRUE(server.status().ok()) << server.status();
  auto shm_channel = CreateChannel(server.target());
  auto plain_channel =
      grpc::CreateChannel(server.target(), grpc::InsecureChannelCredentials());
  for (size_t size : {1000000, 1100000}) {
    for (const auto& channel : {shm_channel, plain_channel}) {
      auto stub = EchoService::NewStub(channel);
      EchoResponse response;
      const grpc::Status status = UnaryEcho(stub.get(), size, 1, &response);
      EXPECT_EQ(status.error_code(), size < 1048576
                                         ? grpc::StatusCode::OK
                                         : grpc::StatusCode::RESOURCE_EXHAUSTED)
          << size << (channel == shm_channel ? " over shm" : " plain");
    }
  }
  EXPECT_EQ(GetChannelStats(shm_channel.get())->calls_on_shm, 2u);
  plain_channel.reset();  // else gRPC's shutdown waits 2 s for it
  EXPECT_EQ(server.Stop(), 0) << "echo_server did not exit cleanly";
}

// A channel whose message limits are raised above gRPC's 4 MiB default keeps
// them over shm, as a user swapping in CreateChannel expects: with 16 MiB
// each way (and a server that takes 16 MiB), a 10 MiB reply, a 10 MiB
// request and 6 MiB messages both ways on a bidi stream arrive intact on the
// shm channel as on a plain one, all over shm. (Shm capped them at
// Options::max_message_bytes, so they failed RESOURCE_EXHAUSTED.)
TEST(ServerLimitTest, RaisedChannelLimitsHoldOverShmAsOverPlain) {
  constexpr int kLimit = 16 << 20;
  ServerProcess server("sync", {absl::StrCat("--max_receive_bytes=", kLimit)});
  ASSERT_TRUE(server.status().ok()) << server.status();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kLimit);
  args.SetMaxSendMessageSize(kLimit);
  ChannelPair channels = ShmAndPlainChannels(server.target(), args);
  for (const auto& channel : {channels.shm, channels.plain}) {
    const char* which = channels.NameOf(channel);
    auto stub = EchoService::NewStub(channel);
    EchoRequest request;
    FillRequest(&request, 10, 1);
    request.set_reply_bytes(10 << 20);
    EchoResponse response;
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(10)));
    grpc::Status status = stub->Unary(&context, request, &response);
    ASSERT_TRUE(status.ok()) << which << " reply: " << status.error_message();
    EXPECT_EQ(response.payload().size(), 10u << 20) << which;
    EXPECT_TRUE(PayloadIntact(response)) << which;

    status = UnaryEcho(stub.get(), 10 << 20, 2, &response);
    ASSERT_TRUE(status.ok()) << which << " request: " << status.error_message();
    EXPECT_TRUE(PayloadIntact(response)) << which;

    grpc::ClientContext stream_context;
    stream_context.set_deadline(In(absl::Seconds(10)));
    auto stream = stub->Bidi(&stream_context);
    for (int64_t seq = 1; seq <= 3; ++seq) {
      EchoRequest message;
      FillRequest(&message, 6 << 20, seq);
      ASSERT_TRUE(stream->Write(message)) << which << " write " << seq;
      ASSERT_TRUE(stream->Read(&response)) << which << " read " << seq;
      EXPECT_EQ(response.seq(), seq) << which;
      EXPECT_EQ(response.payload().size(), 6u << 20) << which;
      EXPECT_TRUE(PayloadIntact(response)) << which;
    }
    stream->WritesDone();
    status = stream->Finish();
    EXPECT_TRUE(status.ok()) << which << " stream: " << status.error_message();
  }
  const ClientStats stats = *GetChannelStats(channels.shm.get());
  EXPECT_EQ(stats.calls_on_shm, 3u);
  EXPECT_EQ(stats.calls_plain_too_large, 0u);
  channels.plain.reset();  // else gRPC's shutdown waits 2 s for it
  EXPECT_EQ(server.Stop(), 0) << "echo_server did not exit cleanly";
}

// Message size limits set in the channel arguments bind shm calls as they
// bind plain ones (they were ignored over shm): with 1 MiB each way, a 2 MiB
// reply and a 2 MiB request fail RESOURCE_EXHAUSTED on both channels; 512 KiB
// passes on both.
TEST_F(BehaviorTest, ChannelArgumentMessageLimitsApplyOverShm) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(1 << 20);
  args.SetMaxSendMessageSize(1 << 20);
  ChannelPair channels = ShmAndPlainChannels(server_->target(), args);
  for (const auto& channel : {channels.shm, channels.plain}) {
    const char* which = channels.NameOf(channel);
    auto stub = EchoService::NewStub(channel);
    for (uint32_t reply : {512u << 10, 2u << 20}) {
      EchoRequest request;
      FillRequest(&request, 10, 1);
      request.set_reply_bytes(reply);
      EchoResponse response;
      grpc::ClientContext context;
      context.set_deadline(In(absl::Seconds(5)));
      EXPECT_EQ(stub->Unary(&context, request, &response).error_code(),
                reply < (1u << 20) ? grpc::StatusCode::OK
                                   : grpc::StatusCode::RESOURCE_EXHAUSTED)
          << which << " reply " << reply;
    }
    for (size_t size : {size_t{512} << 10, size_t{2} << 20}) {
      EchoResponse response;
      EXPECT_EQ(UnaryEcho(stub.get(), size, 1, &response).error_code(),
                size < (1u << 20) ? grpc::StatusCode::OK
                                  : grpc::StatusCode::RESOURCE_EXHAUSTED)
          << which << " request " << size;
    }
  }
  const ClientStats stats = *GetChannelStats(channels.shm.get());
  EXPECT_EQ(stats.calls_on_shm, 3u);  // the 2 MiB request went plain
  EXPECT_EQ(stats.calls_plain_too_large, 1u);
}

// A stream message over the send limit after the first (which alone decides
// whether a call goes over shm) fails its write, and the call ends
// RESOURCE_EXHAUSTED with gRPC's message, as on a plain channel; the
// channel's next call is unharmed.
TEST_F(BehaviorTest, LaterStreamMessageOverTheSendLimitEndsTheCallAsOverPlain) {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(1 << 20);
  ChannelPair channels = ShmAndPlainChannels(server_->target(), args);
  for (const auto& channel : {channels.shm, channels.plain}) {
    const char* which = channels.NameOf(channel);
    auto stub = EchoService::NewStub(channel);
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(10)));
    auto stream = stub->Bidi(&context);
    EchoRequest message;
    FillRequest(&message, 512 << 10, 1);
    ASSERT_TRUE(stream->Write(message)) << which;
    EchoResponse response;
    ASSERT_TRUE(stream->Read(&response)) << which;
    EXPECT_TRUE(PayloadIntact(response)) << which;
    FillRequest(&message, 2 << 20, 2);
    EXPECT_FALSE(stream->Write(message)) << which;
    EXPECT_FALSE(stream->Read(&response)) << which;
    const grpc::Status status = stream->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
        << which << ": " << status.error_message();
    EXPECT_TRUE(absl::StrContains(status.error_message(),
                                  "Sent message larger than max"))
        << which << ": " << status.error_message();
    ASSERT_TRUE(UnaryEcho(stub.get(), 100, 3, &response).ok()) << which;
  }
  const ClientStats stats = *GetChannelStats(channels.shm.get());
  EXPECT_EQ(stats.calls_on_shm, 2u);
  channels.plain.reset();  // else gRPC's shutdown waits 2 s for it
}

// A server that gzips its replies (and a client asking for gzip) works over
// shm as over plain: the injector's in-process call hands it the reply
// decompressed, so what goes into the arena is the plain message.
TEST_F(BehaviorTest, CompressedRepliesArriveIntact) {
  for (size_t size : {100, 100000}) {
    EchoResponse response;
    const grpc::Status status =
        CompressedUnaryEcho(stub_.get(), size, 1, &response);
    ASSERT_TRUE(status.ok()) << size << ": " << status.error_message();
    EXPECT_EQ(response.payload().size(), size);
    EXPECT_TRUE(PayloadIntact(response)) << size;
  }
  EXPECT_EQ(Stats().calls_on_shm, 2u);
}

// A service compiled for protobuf's lite runtime is not in the generated
// descriptor pool, so its calls go plain unless Options::protobuf_methods
// names them; named, they go over shm and work the same.
TEST_F(BehaviorTest, LiteRuntimeMethodsGoOverShmWhenNamed) {
  auto call = [](grpc::Channel* channel, int64_t seq) {
    auto stub = lite::LiteEchoService::NewStub(
        std::shared_ptr<grpc::Channel>(channel, [](grpc::Channel*) {}));
    lite::LiteRequest request;
    request.set_payload(std::string(3000, 'p'));
    request.set_seq(seq);
    lite::LiteReply reply;
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(5)));
    const grpc::Status status = stub->Echo(&context, request, &reply);
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(reply.seq(), seq);
    EXPECT_EQ(reply.payload(), request.payload());
    return reply.peer_pid();
  };
  // Not named: plain (no verified pid), counted as not protobuf.
  EXPECT_EQ(call(channel_.get(), 1), "");
  EXPECT_EQ(Stats().calls_plain_not_protobuf, 1u);
  EXPECT_EQ(Stats().calls_on_shm, 0u);
  // Named: over shm.
  Options options;
  options.protobuf_methods = {kLiteEchoMethod};
  auto named = CreateChannel(server_->target(), options);
  EXPECT_EQ(call(named.get(), 2), std::to_string(getpid()));
  EXPECT_EQ(GetChannelStats(named.get())->calls_on_shm, 1u);
}

TEST_F(BehaviorTest, PeerIdentityCannotBeForged) {
  EchoRequest request;
  request.set_add_metadata(true);
  EchoResponse response;
  grpc::ClientContext context;
  context.AddMetadata("x-shmgrpc-peer-pid", "1");
  ASSERT_TRUE(stub_->Unary(&context, request, &response).ok());
  EXPECT_EQ(response.peer_pid(), std::to_string(getpid()));
  EXPECT_EQ(response.request_metadata().at("x-shmgrpc-peer-uid"),
            std::to_string(getuid()));
}

// A per-call :authority (ClientContext::set_authority) reaches the handler
// over shm as over plain gRPC, and without one both handlers see the same
// default: gRPC's for unix targets, or the channel's
// GRPC_ARG_DEFAULT_AUTHORITY.
TEST_F(BehaviorTest, PerCallAuthorityReachesTheHandler) {
  grpc::ChannelArguments with_default;
  with_default.SetString(GRPC_ARG_DEFAULT_AUTHORITY, "default.example.com");
  std::unique_ptr<EchoService::Stub> stubs[2][2] = {
      {FreshPlainStub(server_->target()),
       EchoService::NewStub(grpc::CreateCustomChannel(
           server_->target(), grpc::InsecureChannelCredentials(),
           with_default))},
      {EchoService::NewStub(channel_),
       EchoService::NewStub(
           CreateChannel(server_->target(), Options(), with_default))}};
  std::string default_authority[2][2];
  for (int shm : {0, 1}) {
    for (int arg : {0, 1}) {
      EchoService::Stub* stub = stubs[shm][arg].get();
      EchoRequest request;
      FillRequest(&request, 100, 1);
      EchoResponse response;
      grpc::ClientContext with_authority;
      with_authority.set_deadline(In(absl::Seconds(10)));
      with_authority.set_authority("echo.example.com:8443");
      grpc::Status status = stub->Unary(&with_authority, request, &response);
      ASSERT_TRUE(status.ok())
          << "shm=" << shm << ": " << status.error_message();
      EXPECT_EQ(response.peer_pid() != "", shm == 1);
      EXPECT_EQ(response.authority(), "echo.example.com:8443") << "shm=" << shm;
      grpc::ClientContext without;
      without.set_deadline(In(absl::Seconds(10)));
      status = stub->Unary(&without, request, &response);
      ASSERT_TRUE(status.ok())
          << "shm=" << shm << ": " << status.error_message();
      default_authority[shm][arg] = response.authority();
    }
  }
  EXPECT_EQ(default_authority[0][0], "localhost");
  EXPECT_EQ(default_authority[1][0], default_authority[0][0]);
  EXPECT_EQ(default_authority[0][1], "default.example.com");
  EXPECT_EQ(default_authority[1][1], default_authority[0][1]);
}

// A handshake timeout of InfiniteDuration means none (handshake deadlines
// are on the monotonic clock, which it must not overflow).
TEST_F(BehaviorTest, AnInfiniteHandshakeTimeoutIsNone) {
  Options options;
  options.handshake_timeout = absl::InfiniteDuration();
  ExpectEchoOver(CreateChannelWithOwnSession(server_->target(), options),
                 /*over_shm=*/true, "infinite handshake timeout");
}

TEST_F(BehaviorTest, ErrorStatusWithDetails) {
  EchoRequest request;
  request.set_error_code(grpc::StatusCode::FAILED_PRECONDITION);
  request.set_error_message("not today");
  request.set_error_details(std::string("\x08\x09\x00binary", 9));
  EchoResponse response;
  grpc::ClientContext context;
  grpc::Status status = stub_->Unary(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(status.error_message(), "not today");
  EXPECT_EQ(status.error_details(), std::string("\x08\x09\x00binary", 9));
  EXPECT_EQ(Stats().calls_on_shm, 1u);
}

TEST_F(BehaviorTest, DeadlineExceededOnTimeWhileHandlerHangs) {
  EchoRequest request;
  request.set_hang(true);
  EchoResponse response;
  grpc::ClientContext context;
  const auto start = std::chrono::steady_clock::now();
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(200));
  grpc::Status status = stub_->Unary(&context, request, &response);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_GE(took, std::chrono::milliseconds(195));
  EXPECT_LT(took, std::chrono::milliseconds(250));
  EXPECT_EQ(Stats().calls_on_shm, 1u);
}

TEST_F(BehaviorTest, DeadlineIsForwardedToTheHandler) {
  EchoRequest request;
  EchoResponse response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(5));
  ASSERT_TRUE(stub_->Unary(&context, request, &response).ok());
  EXPECT_GT(response.deadline_remaining_ms(), 4000);
  EXPECT_LE(response.deadline_remaining_ms(), 5000);
}

TEST_F(BehaviorTest, TryCancelReachesTheHandler) {
  EchoRequest query;
  query.set_report_cancellations(true);
  EchoResponse before;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub_->Unary(&context, query, &before).ok());
  }
  grpc::ClientContext context;
  EchoRequest request;
  request.set_hang(true);
  EchoResponse response;
  std::thread canceller = CancelOnceAHandlerHangs(&context, server_->target());
  grpc::Status status = stub_->Unary(&context, request, &response);
  canceller.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  // The handler notices within its 1 ms poll.
  int seen = before.cancellations_seen();
  for (int i = 0; i < 100 && seen == before.cancellations_seen(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    grpc::ClientContext c;
    EchoResponse after;
    ASSERT_TRUE(stub_->Unary(&c, query, &after).ok());
    seen = after.cancellations_seen();
  }
  EXPECT_EQ(seen, before.cancellations_seen() + 1);
}

// A call cancelled, or past its deadline, before it starts ends so at once,
// over shm as over plain gRPC, and reaches no handler.
TEST_F(BehaviorTest, CallsCancelledOrExpiredBeforeTheyStartEndAtOnce) {
  auto plain_stub = FreshPlainStub(server_->target());
  const uint64_t injected_before =
      FetchServerStats(server_->target()).calls_injected();
  for (int shm : {0, 1}) {
    EchoService::Stub* stub = shm ? stub_.get() : plain_stub.get();
    for (bool cancelled : {true, false}) {
      const std::string what =
          absl::StrCat("shm=", shm, cancelled ? " cancelled" : " expired");
      const grpc::StatusCode expected =
          cancelled ? grpc::StatusCode::CANCELLED
                    : grpc::StatusCode::DEADLINE_EXCEEDED;
      auto prepare = [&](grpc::ClientContext* context) {
        if (cancelled) {
          context->set_deadline(In(absl::Seconds(10)));
          context->TryCancel();
        } else {
          context->set_deadline(In(absl::Milliseconds(-5)));
        }
      };
      EchoRequest request;
      FillRequest(&request, 100, 1);
      EchoResponse response;
      {
        grpc::ClientContext context;
        prepare(&context);
        const absl::Time start = absl::Now();
        const grpc::Status status = stub->Unary(&context, request, &response);
        EXPECT_EQ(status.error_code(), expected)
            << what << " unary: " << status.error_message();
        EXPECT_LT(absl::Now() - start, absl::Milliseconds(500)) << what;
      }
      {
        grpc::ClientContext context;
        prepare(&context);
        auto stream = stub->Bidi(&context);
        stream->Write(request);
        EXPECT_FALSE(stream->Read(&response)) << what;
        stream->WritesDone();
        const grpc::Status status = stream->Finish();
        EXPECT_EQ(status.error_code(), expected)
            << what << " bidi: " << status.error_message();
      }
    }
  }
  EXPECT_EQ(FetchServerStats(server_->target()).calls_injected(),
            injected_before)
      << "a call that had ended reached the server over shm";
  EXPECT_EQ(Stats().calls_plain_ended_before_start, 4u);
  EXPECT_EQ(Stats().calls_on_shm, 0u);
}

TEST_F(BehaviorTest, OversizeMessageIsResourceExhausted) {
  // A 5 MiB request is over the shm send limit, so it goes plain and gRPC
  // judges it: this server takes it, and its 5 MiB echo is over the client's
  // 4 MiB receive limit.
  EchoRequest request;
  FillRequest(&request, 5 << 20, 1);
  EchoResponse response;
  grpc::ClientContext context;
  grpc::Status status = stub_->Unary(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << status.error_message();
  // A reply over the limit is refused on receipt the same way.
  EchoRequest small;
  small.set_reply_bytes(5 << 20);
  grpc::ClientContext context2;
  status = stub_->Unary(&context2, small, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << status.error_message();
  // And the channel still works.
  grpc::ClientContext context3;
  EXPECT_TRUE(stub_->Unary(&context3, EchoRequest(), &response).ok());
}

TEST_F(BehaviorTest, SixtyFourConcurrentCallsFromEightThreads) {
  std::atomic<int> ok{0}, bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      // Each thread keeps 8 async calls in flight at once.
      grpc::CompletionQueue cq;
      struct Call {
        grpc::ClientContext context;
        EchoRequest request;
        EchoResponse response;
        grpc::Status status;
        std::unique_ptr<grpc::ClientAsyncResponseReader<EchoResponse>> reader;
      };
      std::vector<std::unique_ptr<Call>> calls;
      for (int i = 0; i < 8; ++i) {
        auto call = std::make_unique<Call>();
        FillRequest(&call->request, 1000 + 100 * i, t * 100 + i);
        call->request.set_delay_ms(20);  // so all 64 overlap
        call->reader = stub_->AsyncUnary(&call->context, call->request, &cq);
        call->reader->Finish(&call->response, &call->status, call.get());
        calls.push_back(std::move(call));
      }
      for (int i = 0; i < 8; ++i) {
        void* tag;
        bool got;
        if (!cq.Next(&tag, &got)) break;
        auto* call = static_cast<Call*>(tag);
        if (got && call->status.ok() && PayloadIntact(call->response) &&
            call->response.seq() == call->request.seq()) {
          ++ok;
        } else {
          ++bad;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 64);
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(Stats().calls_on_shm, 64u);
}

TEST_F(BehaviorTest, TwoClientProcessesAtOnce) {
  // Separate executables (fork after gRPC started is unsupported by gRPC).
  std::vector<pid_t> children;
  for (int c = 0; c < 2; ++c) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const std::string binary = testing::RunfilePath("tests/echo_client");
      const std::string target = "--target=" + server_->target();
      execl(binary.c_str(), binary.c_str(), target.c_str(), "--calls=300",
            "--size=3000", static_cast<char*>(nullptr));
      _exit(127);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) EXPECT_EQ(testing::WaitPeer(pid), 0);
}

// Handshakes on both sides may take up to 10 s instead of the default 1 s:
// for tests whose premise is that every handshake succeeds, not that it is
// quick. (Under ASan beside the fault tests two of 100 handshakes once took
// longer than 1 s, and those channels went plain, as designed.)
constexpr int64_t kPatientHandshakeMs = 10'000;

class PatientHandshakeTest : public EchoTest {
 protected:
  std::vector<std::string> ServerArgs() override {
    return {absl::StrCat("--handshake_timeout_ms=", kPatientHandshakeMs)};
  }
  static Options PatientClientOptions() {
    Options options;
    options.handshake_timeout = absl::Milliseconds(kPatientHandshakeMs);
    return options;
  }
};

// Every fresh channel sends its first call right after its handshake. The
// server's session thread must not see that frame before the server has
// recorded the session (it once did: a null session and a crashed server,
// ~1 in 350 connections under load). The fixture checks the server exits
// cleanly.
TEST_F(PatientHandshakeTest, ManyFreshChannelsCallRightAfterTheirHandshake) {
  constexpr int kChannels = 100;
  int on_shm = 0;
  for (int i = 0; i < kChannels; ++i) {
    std::shared_ptr<grpc::Channel> channel =
        CreateChannelWithOwnSession(server_->target(), PatientClientOptions());
    auto stub = EchoService::NewStub(channel);
    EchoResponse response;
    const grpc::Status status = UnaryEcho(stub.get(), 64, i, &response);
    ASSERT_TRUE(status.ok())
        << "channel " << i << ": " << status.error_message();
    ASSERT_EQ(response.seq(), i);
    on_shm += static_cast<int>(GetChannelStats(channel.get())->calls_on_shm);
  }
  EXPECT_EQ(on_shm, kChannels);
}

// Channels of one process to one server share one session, as gRPC channels
// share one subchannel: eight more channels cost no new handshake, arena or
// session thread, and each still counts its own calls. Different session
// options, or GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, get a session of their
// own. Closing channels leaves the session to the ones still open; the last
// one closes it.
TEST_F(BehaviorTest, ChannelsToOneServerShareOneSession) {
  const std::string target = server_->target();
  ExpectEchoOver(channel_, true, "fixture channel");
  std::vector<std::shared_ptr<grpc::Channel>> shared;
  for (int i = 1; i <= 8; ++i) {
    shared.push_back(CreateChannel(target));
    ExpectEchoOver(shared.back(), true, absl::StrCat("channel ", i));
  }
  EXPECT_EQ(CallsOnShm(), 1u);
  ServerStatsReply server = FetchServerStats(target);
  EXPECT_EQ(server.sessions_accepted(), 1u);
  EXPECT_EQ(server.sessions_open(), 1u);
  // The session's counters are the same seen from any of its channels.
  const ClientStats first = Stats();
  EXPECT_EQ(first.sessions_opened, 1u);
  EXPECT_GE(first.session.messages_received, 9u);
  EXPECT_EQ(GetChannelStats(shared.back().get())->session.messages_received,
            first.session.messages_received);

  Options small_arena;
  small_arena.arena_bytes = 8 << 20;
  auto other_options = CreateChannel(target, small_arena);
  ExpectEchoOver(other_options, true, "other options");
  auto own = CreateChannelWithOwnSession(target);
  ExpectEchoOver(own, true, "own session");
  EXPECT_EQ(FetchServerStats(target).sessions_open(), 3u);

  shared.clear();
  other_options.reset();
  own.reset();
  EXPECT_TRUE(
      WaitFor([&] { return FetchServerStats(target).sessions_open() == 1; },
              absl::Seconds(5)))
      << "sessions of closed channels stay open";
  ExpectEchoOver(channel_, true, "fixture channel, after");
  EXPECT_EQ(CallsOnShm(), 2u);
  stub_.reset();
  channel_.reset();
  server = ExpectServerIdle(target);
  EXPECT_EQ(server.sessions_accepted(), 3u);
}

// Channels made and dropped by eight threads at once, all to one server:
// joining a link, making a new one while the last channel of the old one is
// closing it, and reconnecting race each other. Every call succeeds over
// shm, and the server ends idle.
TEST_F(BehaviorTest, ChannelChurnFromManyThreadsSharesSafely) {
  stub_.reset();
  channel_.reset();  // so that links come and go with the threads' channels
  constexpr int kThreads = 8, kChannelsEach = 25;
  std::atomic<int> on_shm{0}, failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kChannelsEach; ++i) {
        auto stub = EchoService::NewStub(CreateChannel(server_->target()));
        EchoResponse response;
        const grpc::Status status =
            UnaryEcho(stub.get(), 512, t * 1000 + i, &response);
        if (!status.ok() || !PayloadIntact(response)) {
          failed.fetch_add(1);
        } else if (!response.peer_pid().empty()) {
          on_shm.fetch_add(1);
        }
        stub.reset();  // sometimes the last channel of its link
        absl::SleepFor(absl::Milliseconds((t + i) % 4));
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(on_shm.load(), kThreads * kChannelsEach);
  const ServerStatsReply stats = ExpectServerIdle(*server_);
  std::printf("%d channels: %lu sessions\n", kThreads * kChannelsEach,
              static_cast<unsigned long>(stats.sessions_accepted()));
}

// An app that makes a channel per request finds the session of its last
// channel still open (Options::session_linger, 1 s): 20 such channels in a
// row cost one handshake, every call goes over shm, and once the linger
// has passed the session closes and this process holds no shared memory.
// (Before, each channel opened and closed a session of its own: 37-41 ms
// per channel and call instead of 0.7-1.4 ms, plain gRPC 1.1-2.2 ms.) With
// a linger of 0 a session closes with its channel.
TEST_F(BehaviorTest, AChannelPerRequestReusesTheLingeringSession) {
  stub_.reset();
  channel_.reset();
  const std::string target = server_->target();
  auto sessions_open = [&] { return FetchServerStats(target).sessions_open(); };
  ASSERT_TRUE(WaitFor([&] { return sessions_open() == 0; }, absl::Seconds(5)))
      << "the fixture's session did not close after its linger";
  uint64_t accepted = FetchServerStats(target).sessions_accepted();
  for (int i = 0; i < 20; ++i) {
    ExpectEchoOver(CreateChannel(target), true, absl::StrCat("channel ", i));
  }
  EXPECT_EQ(FetchServerStats(target).sessions_accepted() - accepted, 1u);
  EXPECT_EQ(sessions_open(), 1u) << "closed at once with its last channel";
  EXPECT_TRUE(WaitFor([&] { return sessions_open() == 0; }, absl::Seconds(5)))
      << "still open well after the linger";
  ExpectNoShmHeldBy(getpid(), "the client, after the linger");

  Options no_linger;
  no_linger.session_linger = absl::ZeroDuration();
  accepted = FetchServerStats(target).sessions_accepted();
  for (int i = 0; i < 3; ++i) {
    ExpectEchoOver(CreateChannel(target, no_linger), true,
                   absl::StrCat("channel without linger ", i));
    EXPECT_TRUE(
        WaitFor([&] { return sessions_open() == 0; }, absl::Milliseconds(500)))
        << "a session without linger outlived its channel";
  }
  EXPECT_EQ(FetchServerStats(target).sessions_accepted() - accepted, 3u);
}

// A GenericStub Unary echo of a 100-byte payload (never hijacked: not a
// protobuf call, so it travels the channel's plain path).
grpc::Status GenericUnaryEcho(const std::shared_ptr<grpc::Channel>& channel,
                              int64_t seq, EchoResponse* response) {
  grpc::GenericStub generic(channel);
  EchoRequest request;
  FillRequest(&request, 100, seq);
  grpc::ByteBuffer request_bytes;
  bool own;
  if (!grpc::SerializationTraits<EchoRequest>::Serialize(request,
                                                         &request_bytes, &own)
           .ok()) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "cannot serialize");
  }
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(10)));
  grpc::ByteBuffer reply_bytes;
  CallDone done;
  generic.UnaryCall(&context, "/shmgrpc.test.EchoService/Unary",
                    grpc::StubOptions(), &request_bytes, &reply_bytes,
                    [&](grpc::Status status) { done.Set(status); });
  if (!done.Await(absl::Seconds(15))) {
    return grpc::Status(grpc::StatusCode::UNKNOWN, "no callback in 15 s");
  }
  const grpc::Status status = done.status();
  if (status.ok() && !grpc::SerializationTraits<EchoResponse>::Deserialize(
                          &reply_bytes, response)
                          .ok()) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "cannot parse the reply");
  }
  return status;
}

TEST_F(BehaviorTest, GenericStubCallGoesOverThePlainPath) {
  EchoResponse response;
  const grpc::Status status = GenericUnaryEcho(channel_, 5, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(PayloadIntact(response));
  EXPECT_EQ(response.seq(), 5);
  // Not hijacked: over UDS, so the server saw no shm peer identity.
  EXPECT_EQ(response.peer_pid(), "");
  EXPECT_EQ(Stats().calls_on_shm, 0u);
}

// An application's own client interceptor, as a tracing or auth one would
// be: it adds metadata, replaces EchoRequests with copies whose seq is
// 1000 higher (and, on bidi streams, serializes them itself, so that shm
// sends gRPC's bytes), and counts the messages and statuses it sees. (Only
// for generated-stub calls: a GenericStub's send message is a ByteBuffer.)
class AppInterceptor : public grpc::experimental::Interceptor {
 public:
  struct Seen {
    std::atomic<int> messages{0};
    std::atomic<int> ok_statuses{0};
    std::atomic<size_t> serialized_bytes{0};
  };
  AppInterceptor(grpc::experimental::ClientRpcInfo* info, Seen* seen)
      : info_(info), seen_(seen) {}
  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    using Hook = grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(Hook::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace("x-app-interceptor", "seen");
    }
    if (methods->QueryInterceptionHookPoint(Hook::PRE_SEND_MESSAGE) &&
        methods->GetSendMessage() != nullptr) {
      replacement_ =
          *static_cast<const EchoRequest*>(methods->GetSendMessage());
      replacement_.set_seq(replacement_.seq() + 1000);
      methods->ModifySendMessage(&replacement_);
      // As a size-logging interceptor would; shm then sends gRPC's bytes.
      if (info_->type() ==
          grpc::experimental::ClientRpcInfo::Type::BIDI_STREAMING) {
        seen_->serialized_bytes.fetch_add(
            methods->GetSerializedSendMessage()->Length());
      }
    }
    if (methods->QueryInterceptionHookPoint(Hook::POST_RECV_MESSAGE) &&
        methods->GetRecvMessage() != nullptr) {
      seen_->messages.fetch_add(1);
    }
    if (methods->QueryInterceptionHookPoint(Hook::POST_RECV_STATUS) &&
        methods->GetRecvStatus()->ok()) {
      seen_->ok_statuses.fetch_add(1);
    }
    methods->Proceed();
  }

 private:
  grpc::experimental::ClientRpcInfo* const info_;
  Seen* const seen_;
  EchoRequest replacement_;  // alive until the send completes
};

class AppInterceptorFactory
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit AppInterceptorFactory(AppInterceptor::Seen* seen) : seen_(seen) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo* info) override {
    return new AppInterceptor(info, seen_);
  }

 private:
  AppInterceptor::Seen* const seen_;
};

// The application's own client interceptors see shm calls as plain ones:
// metadata they add reaches the handler, a request they replace is the one
// sent, and they see every reply message and the status, on shm calls and
// on a call that goes plain.
TEST_F(BehaviorTest, ApplicationInterceptorsSeeShmCalls) {
  AppInterceptor::Seen seen;
  std::vector<
      std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(std::make_unique<AppInterceptorFactory>(&seen));
  Options options;
  options.max_shm_metadata_bytes = 128;
  auto channel = experimental::CreateCustomChannelWithInterceptors(
      server_->target(), grpc::InsecureChannelCredentials(),
      grpc::ChannelArguments(), std::move(interceptors), options);
  auto stub = EchoService::NewStub(channel);

  EchoRequest request;
  FillRequest(&request, 100, 1);
  request.set_add_metadata(true);
  EchoResponse response;
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(10)));
  grpc::Status status = stub->Unary(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_NE(response.peer_pid(), "") << "not over shm";
  EXPECT_EQ(response.seq(), 1001);
  EXPECT_EQ(response.request_metadata().at("x-app-interceptor"), "seen");

  grpc::ClientContext stream_context;
  stream_context.set_deadline(In(absl::Seconds(10)));
  auto stream = stub->Bidi(&stream_context);
  for (int64_t seq = 1; seq <= 3; ++seq) {
    FillRequest(&request, 100, seq);
    ASSERT_TRUE(stream->Write(request));
    ASSERT_TRUE(stream->Read(&response));
    EXPECT_EQ(response.seq(), seq + 1000);
  }
  stream->WritesDone();
  status = stream->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(GetChannelStats(channel.get())->calls_on_shm, 2u);
  EXPECT_GT(seen.serialized_bytes.load(), 300u);

  // Over 128 bytes of request metadata: this call goes plain.
  FillRequest(&request, 100, 5);
  grpc::ClientContext plain_context;
  plain_context.set_deadline(In(absl::Seconds(10)));
  plain_context.AddMetadata("x-large", std::string(200, 'v'));
  status = stub->Unary(&plain_context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.peer_pid(), "") << "not plain";
  EXPECT_EQ(response.seq(), 1005);
  EXPECT_EQ(response.request_metadata().at("x-app-interceptor"), "seen");
  EXPECT_EQ(seen.messages.load(), 5);
  EXPECT_EQ(seen.ok_statuses.load(), 3);
  EXPECT_EQ(GetChannelStats(channel.get())->calls_plain_large_metadata, 1u);
}

// The application's server interceptors (ServerBuilder::experimental()
// .SetInterceptorCreators) see shm calls, which enter the unchanged server,
// as they see plain ones, with every server style: the echo server's
// interceptor answers with the method and the caller's verified shm pid,
// which it reads from the call's metadata (empty on a plain call).
TEST(ServerInterceptorTest, SeesShmCallsWithTheVerifiedPeer) {
  for (const char* style : {"sync", "callback", "async"}) {
    ServerProcess server(style, {"--server_interceptor"});
    ASSERT_TRUE(server.status().ok()) << server.status();
    auto shm_stub = EchoService::NewStub(CreateChannel(server.target()));
    auto plain_stub = EchoService::NewStub(grpc::CreateChannel(
        server.target(), grpc::InsecureChannelCredentials()));
    const std::string pid = std::to_string(getpid());
    auto tag_of = [](const grpc::ClientContext& context) {
      auto it = context.GetServerInitialMetadata().find("x-server-interceptor");
      return it == context.GetServerInitialMetadata().end()
                 ? std::string("(none)")
                 : std::string(it->second.data(), it->second.size());
    };
    for (auto* stub : {shm_stub.get(), plain_stub.get()}) {
      const bool shm = stub == shm_stub.get();
      EchoRequest request;
      FillRequest(&request, 100, 1);
      EchoResponse response;
      grpc::ClientContext context;
      context.set_deadline(In(absl::Seconds(10)));
      ASSERT_TRUE(stub->Unary(&context, request, &response).ok()) << style;
      EXPECT_EQ(tag_of(context),
                "/shmgrpc.test.EchoService/Unary " + (shm ? pid : ""))
          << style;
    }
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(10)));
    auto stream = shm_stub->Bidi(&context);
    EchoRequest request;
    FillRequest(&request, 100, 1);
    EchoResponse response;
    ASSERT_TRUE(stream->Write(request)) << style;
    ASSERT_TRUE(stream->Read(&response)) << style;
    stream->WritesDone();
    EXPECT_TRUE(stream->Finish().ok()) << style;
    EXPECT_EQ(tag_of(context), "/shmgrpc.test.EchoService/Bidi " + pid)
        << style;
    // gRPC's server shutdown waits out its 2 s deadline while a plain
    // client stays connected.
    plain_stub.reset();
    EXPECT_EQ(server.Stop(), 0)
        << style << ": echo_server did not exit cleanly";
  }
}

// CreateChannel in gRPC's shape takes the plain channel's credentials, and
// only the plain path uses them: a channel with LocalCredentials(UDS) to a
// server whose port takes LocalServerCredentials(UDS) works over shm and
// plain alike; one with TLS credentials (which a plaintext unix port cannot
// speak) still gets shm (the session checks the peer's uid itself), and its
// plain calls fail UNAVAILABLE as they would on grpc::CreateChannel. A
// handler sees the local credentials' auth context only on plain calls.
TEST(CredentialsTest, ChannelCredentialsAreThePlainPaths) {
  ServerProcess server("sync", {"--local_credentials"});
  ASSERT_TRUE(server.status().ok()) << server.status();
  // Qualified: unqualified, the credentials argument finds grpc::CreateChannel
  // too (argument-dependent lookup).
  std::shared_ptr<grpc::Channel> local = shmgrpc::CreateChannel(
      server.target(), grpc::experimental::LocalCredentials(UDS));
  std::shared_ptr<grpc::Channel> tls = shmgrpc::CreateChannel(
      server.target(), grpc::SslCredentials(grpc::SslCredentialsOptions()));
  for (const auto& channel : {local, tls}) {
    const char* which = channel == local ? "local" : "tls";
    auto stub = EchoService::NewStub(channel);
    EchoResponse response;
    grpc::Status status = UnaryEcho(stub.get(), 4096, 1, &response);
    ASSERT_TRUE(status.ok()) << which << ": " << status.error_message();
    EXPECT_NE(response.peer_pid(), "") << which << ": not over shm";
    // What README says a handler sees on a shm call: no credential identity.
    EXPECT_EQ(response.transport_security_type(), "") << which;
    status = GenericUnaryEcho(channel, 2, &response);
    if (channel == local) {
      EXPECT_TRUE(status.ok()) << status.error_message();
      EXPECT_EQ(response.seq(), 2);
      EXPECT_EQ(response.transport_security_type(), "local");
    } else {
      EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE)
          << status.error_message();
    }
    EXPECT_EQ(GetChannelStats(channel.get())->calls_on_shm, 1u) << which;
  }
  EXPECT_EQ(server.Stop(), 0) << "echo_server did not exit cleanly";
}

// Call credentials (ClientContext::set_credentials) are applied by gRPC's
// core as it sends a call, which a hijacked call never is: such a call goes
// plain, and the handler sees the credentials' metadata as it would without
// shm (over shm the token was dropped: no "authorization" reached the
// handler). Calls without them on the same channel still take shm.
TEST(CredentialsTest, CallsWithCallCredentialsGoPlainAndCarryThem) {
  ServerProcess server("sync", {"--local_credentials"});
  ASSERT_TRUE(server.status().ok()) << server.status();
  std::shared_ptr<grpc::Channel> channel = shmgrpc::CreateChannel(
      server.target(), grpc::experimental::LocalCredentials(UDS));
  auto stub = EchoService::NewStub(channel);
  EchoRequest request;
  FillRequest(&request, 256, 1);
  request.set_add_metadata(true);  // the handler echoes what it was sent
  EchoResponse response;
  grpc::ClientContext with_token;
  with_token.set_deadline(In(absl::Seconds(10)));
  with_token.set_credentials(grpc::AccessTokenCredentials("token-1234"));
  grpc::Status status = stub->Unary(&with_token, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.request_metadata().count("authorization"), 1u)
      << "the token did not reach the handler";
  if (response.request_metadata().count("authorization") == 1) {
    EXPECT_EQ(response.request_metadata().at("authorization"),
              "Bearer token-1234");
  }
  EXPECT_EQ(response.peer_pid(), "") << "went over shm";

  grpc::ClientContext without;
  without.set_deadline(In(absl::Seconds(10)));
  status = stub->Unary(&without, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_NE(response.peer_pid(), "") << "a call without them went plain";
  const ClientStats stats = *GetChannelStats(channel.get());
  EXPECT_EQ(stats.calls_plain_call_credentials, 1u);
  EXPECT_EQ(stats.calls_on_shm, 1u);
  stub.reset();
  channel.reset();
  EXPECT_EQ(server.Stop(), 0) << "echo_server did not exit cleanly";
}

// Raw connections to the handshake socket of a live server.
int RawConnect(const std::string& path) {
  absl::StatusOr<int> sock = transport::ConnectUnix(path);
  return sock.ok() ? *sock : -1;
}

// True when the server closed the connection within 3 s.
bool ClosedByServer(int sock) {
  timeval tv{3, 0};
  setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char buf[64];
  for (;;) {
    const ssize_t n = read(sock, buf, sizeof(buf));
    if (n == 0) return true;
    if (n < 0) return false;  // timeout: still open
  }
}

TEST_F(BehaviorTest, HostileHandshakesCloseOnlyThatConnection) {
  const std::string shm_path = server_->socket_path() + ".shm";
  // Junk bytes.
  int junk = RawConnect(shm_path);
  ASSERT_GE(junk, 0);
  ASSERT_EQ(write(junk, "GET / HTTP/1.1\r\n\r\n\0\0\0\0\0\0", 24), 24);
  EXPECT_TRUE(ClosedByServer(junk));
  close(junk);
  // Wrong protocol versions, with a valid-looking hello and no fd: one from
  // the future, and version 1 (a build before stream windows were
  // advertised and enforced).
  for (const uint16_t version : {9, 1}) {
    int old = RawConnect(shm_path);
    ASSERT_GE(old, 0);
    transport::Hello hello{
        transport::kHandshakeMagic, version, version, 0, 4096, 1 << 20};
    ASSERT_EQ(write(old, &hello, sizeof(hello)), sizeof(hello));
    transport::Welcome welcome{};
    ASSERT_EQ(read(old, &welcome, sizeof(welcome)), sizeof(welcome));
    EXPECT_EQ(welcome.result, transport::kNoCommonVersion) << version;
    EXPECT_TRUE(ClosedByServer(old)) << version;
    close(old);
  }
  // A short read, then silence past the handshake timeout (1 s).
  int slow = RawConnect(shm_path);
  ASSERT_GE(slow, 0);
  ASSERT_EQ(write(slow, "SSG", 3), 3);
  EXPECT_TRUE(ClosedByServer(slow));
  close(slow);
  // A hello without the fd.
  int no_fd = RawConnect(shm_path);
  ASSERT_GE(no_fd, 0);
  transport::Hello good{transport::kHandshakeMagic,
                        transport::kMinProtocolVersion,
                        transport::kMaxProtocolVersion,
                        0,
                        4096,
                        1 << 20};
  ASSERT_EQ(write(no_fd, &good, sizeof(good)), sizeof(good));
  EXPECT_TRUE(ClosedByServer(no_fd));
  close(no_fd);
  // Meanwhile and afterwards the server serves shm clients.
  auto channel = CreateChannelWithOwnSession(server_->target());
  auto stub = EchoService::NewStub(channel);
  EchoResponse response;
  grpc::ClientContext context;
  ASSERT_TRUE(stub->Unary(&context, EchoRequest(), &response).ok());
  EXPECT_EQ(GetChannelStats(channel.get())->calls_on_shm, 1u);
}

// Sends `hello` with `fds` as one SCM_RIGHTS message.
bool SendHello(int sock, const transport::Hello& hello,
               const std::vector<int>& fds) {
  iovec iov{const_cast<transport::Hello*>(&hello), sizeof(hello)};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  return sendmsg(sock, &msg, 0) == static_cast<ssize_t>(sizeof(hello));
}

// A hello whose segment is not one — a pipe, an unsealed memfd, a sealed
// memfd of the wrong size, two fds at once — is refused (kBadSegment, or,
// for two fds, the connection closed), and the server keeps no descriptor
// of it; it serves shm clients all along.
TEST_F(BehaviorTest, HellosWithBadSegmentsAreRefusedAndCostNoFd) {
  const std::string shm_path = server_->socket_path() + ".shm";
  const transport::Hello hello{transport::kHandshakeMagic,
                               transport::kMinProtocolVersion,
                               transport::kMaxProtocolVersion,
                               0,
                               4096,
                               1 << 20};
  int pipe_fds[2];
  ASSERT_EQ(pipe2(pipe_fds, O_CLOEXEC), 0);
  const int unsealed = memfd_create("unsealed", MFD_CLOEXEC);
  const int small = memfd_create("small", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ASSERT_GE(unsealed, 0);
  ASSERT_GE(small, 0);
  ASSERT_EQ(ftruncate(unsealed, 8 << 20), 0);
  ASSERT_EQ(ftruncate(small, 4096), 0);
  ASSERT_EQ(
      fcntl(small, F_ADD_SEALS,
            F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL),
      0);
  const int fds_before = FdsOf(server_->pid());
  ASSERT_GT(fds_before, 0);
  const struct {
    const char* what;
    std::vector<int> fds;
  } cases[] = {{"a pipe", {pipe_fds[0]}},
               {"an unsealed memfd", {unsealed}},
               {"a sealed memfd of the wrong size", {small}},
               {"two fds", {pipe_fds[0], small}}};
  for (const auto& bad : cases) {
    const int sock = RawConnect(shm_path);
    ASSERT_GE(sock, 0);
    ASSERT_TRUE(SendHello(sock, hello, bad.fds)) << bad.what;
    if (bad.fds.size() == 1) {
      timeval tv{3, 0};
      setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      transport::Welcome welcome{};
      ASSERT_EQ(read(sock, &welcome, sizeof(welcome)), sizeof(welcome))
          << bad.what;
      EXPECT_EQ(welcome.result, transport::kBadSegment) << bad.what;
    }
    EXPECT_TRUE(ClosedByServer(sock)) << bad.what;
    close(sock);
  }
  for (int fd : {pipe_fds[0], pipe_fds[1], unsealed, small}) close(fd);
  int fds_after = -1;
  EXPECT_TRUE(WaitFor(
      [&] {
        fds_after = FdsOf(server_->pid());
        return fds_after == fds_before;
      },
      absl::Seconds(3)))
      << "server fds " << fds_before << " -> " << fds_after;
  auto channel = CreateChannelWithOwnSession(server_->target());
  EchoResponse response;
  ASSERT_TRUE(
      UnaryEcho(EchoService::NewStub(channel).get(), 64, 1, &response).ok());
  EXPECT_EQ(GetChannelStats(channel.get())->calls_on_shm, 1u);
}

// A flood of connections that never finish their hello (each would hold a
// handshake thread up to the 1 s timeout) cannot make the server start a
// thread per connection: beyond ShmServer::kMaxConcurrentHandshakes it
// refuses at once (kServerBusy), and it serves shm again once they go.
TEST_F(BehaviorTest, ConnectionFloodIsRefusedBeyondTheHandshakeLimit) {
  const std::string shm_path = server_->socket_path() + ".shm";
  const int threads_before = ThreadsOf(server_->pid());
  ASSERT_GT(threads_before, 0);
  const uint64_t refused_before =
      FetchServerStats(server_->target()).handshakes_refused();
  constexpr int kFlood = 200;
  constexpr int kLimit = static_cast<int>(ShmServer::kMaxConcurrentHandshakes);
  std::vector<int> silent;
  for (int i = 0; i < kFlood; ++i) {
    const int sock = RawConnect(shm_path);
    ASSERT_GE(sock, 0) << "connection " << i;
    ASSERT_EQ(write(sock, "SSG", 3), 3);  // a hello that never completes
    silent.push_back(sock);
  }
  // All of them were taken within the 1 s the first ones hold their
  // handshakes, so all but kLimit were refused at once.
  uint64_t refused = 0;
  EXPECT_TRUE(WaitFor(
      [&] {
        refused = FetchServerStats(server_->target()).handshakes_refused() -
                  refused_before;
        return refused >= kFlood - kLimit;
      },
      absl::Seconds(5)))
      << "refused " << refused;
  const int threads_during = ThreadsOf(server_->pid());
  // Slack for gRPC's own threads, which come and go.
  EXPECT_LE(threads_during, threads_before + kLimit + 16)
      << "a thread per connection";
  // The refused connections were told why (the others hear nothing yet).
  int told_busy = 0;
  EXPECT_TRUE(WaitFor(
      [&] {
        for (int& sock : silent) {
          transport::Welcome refusal{};
          if (sock < 0 || recv(sock, &refusal, sizeof(refusal), MSG_DONTWAIT) !=
                              static_cast<ssize_t>(sizeof(refusal))) {
            continue;
          }
          EXPECT_EQ(refusal.result, transport::kServerBusy);
          ++told_busy;
          close(sock);
          sock = -1;
        }
        return told_busy >= kFlood - kLimit;
      },
      absl::Seconds(5)))
      << told_busy << " told busy";
  for (int sock : silent) {
    if (sock >= 0) close(sock);
  }
  // Their handshakes end at EOF; a new client gets a session again.
  EXPECT_TRUE(WaitFor(
      [&] {
        auto channel = CreateChannelWithOwnSession(server_->target());
        EchoResponse response;
        return UnaryEcho(EchoService::NewStub(channel).get(), 64, 1, &response)
                   .ok() &&
               GetChannelStats(channel.get())->calls_on_shm == 1;
      },
      absl::Seconds(5)))
      << "no shm session after the flood ended";
  std::printf(
      "server threads: %d before, %d during a %d-connection flood; "
      "%lu refused\n",
      threads_before, threads_during, kFlood,
      static_cast<unsigned long>(refused));
}

TEST(NoShmServerTest, ChannelFallsBackToPlainGrpc) {
  ServerProcess server("sync", {"--no-shm"});
  ASSERT_TRUE(server.status().ok()) << server.status();
  auto channel = CreateChannel(server.target());
  auto stub = EchoService::NewStub(channel);
  EchoRequest request;
  FillRequest(&request, 4096, 3);
  EchoResponse response;
  grpc::ClientContext context;
  ASSERT_TRUE(stub->Unary(&context, request, &response).ok());
  EXPECT_TRUE(PayloadIntact(response));
  const ClientStats stats = *GetChannelStats(channel.get());
  EXPECT_EQ(stats.calls_on_shm, 0u);
  EXPECT_EQ(stats.calls_plain_no_session, 1u);
}

// A channel to a target that is not a unix socket has no session and makes
// no handshake: its calls go plain and succeed.
TEST(NoShmServerTest, NonUnixTargetsArePlainGrpc) {
  const int port = testing::FreeTcpPort();
  ServerProcess server("sync", {absl::StrCat("--tcp_port=", port)});
  ASSERT_TRUE(server.status().ok()) << server.status();
  auto channel = CreateChannel(absl::StrCat("127.0.0.1:", port));
  ExpectEchoOver(channel, false, "tcp");
  const ClientStats stats = *GetChannelStats(channel.get());
  EXPECT_EQ(stats.calls_plain_no_session, 1u);
  EXPECT_EQ(stats.sessions_opened, 0u);
  EXPECT_EQ(FetchServerStats(server.target()).sessions_accepted(), 0u);
  channel.reset();  // else gRPC's shutdown waits 2 s for it
  EXPECT_EQ(server.Stop(), 0);
}

// A server on an abstract unix socket ("unix-abstract:name", no file) serves
// shm on the abstract name "name.shm"; a client of one without shm goes
// plain. Neither leaves a file behind.
TEST(AbstractSocketTest, ShmOverAbstractNames) {
  for (const bool with_shm : {true, false}) {
    std::vector<std::string> args = {"--abstract"};
    if (!with_shm) args.push_back("--no-shm");
    ServerProcess server("sync", args);
    ASSERT_TRUE(server.status().ok()) << server.status();
    const std::string target = "unix-abstract:" + server.socket_path();
    auto channel = CreateChannel(target);
    ExpectEchoOver(channel, with_shm, with_shm ? "shm server" : "plain server");
    if (with_shm) {
      EXPECT_EQ(FetchServerStats(target).sessions_accepted(), 1u);
    }
    EXPECT_NE(access(server.socket_path().c_str(), F_OK), 0);
    EXPECT_NE(access((server.socket_path() + ".shm").c_str(), F_OK), 0);
    channel.reset();  // its plain connection would hold up the server's exit
    EXPECT_EQ(server.Stop(), 0);
  }
}

// A channel made once the server offers shm gets it for its first call,
// although an older channel to the same server, made while it had none,
// holds a session link that is waiting out its reconnect backoff: joining
// the link tries a handshake at once, as a channel of its own would.
TEST(NoShmServerTest, ChannelMadeAfterShmAppearsUsesItAtOnce) {
  auto server = std::make_unique<ServerProcess>(
      "sync", std::vector<std::string>{"--no-shm"});
  ASSERT_TRUE(server->status().ok()) << server->status();
  const std::string socket_path = server->socket_path();
  Options options;
  options.reconnect_backoff_initial = absl::Seconds(30);
  options.reconnect_backoff_max = absl::Seconds(30);
  auto early = CreateChannel(server->target(), options);
  auto early_stub = EchoService::NewStub(early);
  EchoResponse response;
  ASSERT_TRUE(UnaryEcho(early_stub.get(), 100, 1, &response).ok());
  EXPECT_EQ(response.peer_pid(), "");
  EXPECT_EQ(server->Stop(), 0);
  server.reset();
  server = std::make_unique<ServerProcess>("sync", std::vector<std::string>{},
                                           socket_path);
  ASSERT_TRUE(server->status().ok()) << server->status();

  auto late = CreateChannel(server->target(), options);
  auto late_stub = EchoService::NewStub(late);
  ASSERT_TRUE(UnaryEcho(late_stub.get(), 100, 2, &response).ok());
  EXPECT_NE(response.peer_pid(), "") << "the first call did not use shm";
  // The session is the link's: the early channel has it now too.
  ASSERT_TRUE(UnaryEcho(early_stub.get(), 100, 3, &response).ok());
  EXPECT_NE(response.peer_pid(), "");
  EXPECT_EQ(FetchServerStats(server->target()).sessions_accepted(), 1u);
  early_stub.reset();
  early.reset();  // its plain connection would hold up the server's exit
  late_stub.reset();
  late.reset();
  EXPECT_EQ(server->Stop(), 0);
}

}  // namespace
}  // namespace shmgrpc::test
