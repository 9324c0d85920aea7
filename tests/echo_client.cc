// echo_client: a separate client process for tests that need several, or
// that kill the client.
//
//   echo_client --target=unix:/path [--calls=N] [--size=BYTES] [--mode=M]
//               [--expect=shm|plain] [--deadline_ms=N]
//               [--stream_window_messages=N] [--stream_window_bytes=N]
//               [--uid=N] [--in_call_after=N] [--hold_ms=N]
//
// --deadline_ms gives every call that deadline (default: none);
// --stream_window_messages and --stream_window_bytes set those Options.
//
// Modes:
//   unary        (default) N unary calls over shmgrpc::CreateChannel, every
//                reply checked (checksum, sequence, server-verified peer
//                pid); exits 0 only if all N succeeded, each over shared
//                memory (or, with --expect=plain, none of them).
//   hang-unary   prints "calling", then makes one unary call the server
//                never answers (for tests that kill this process mid-call).
//   stream       bidi ping-pong forever; prints "in-call" after 100 round
//                trips (for tests that kill this process mid-stream).
//   server-stream  one server stream of endless --size replies, read
//                forever; prints "in-call" after --in_call_after of them
//                (default 100; 0: once the server's initial metadata came,
//                before any reply is read), then reads none for --hold_ms
//                (default 0) (for tests that stop this process while the
//                server keeps writing to it).
//   server-stream-n  one server stream of N --size replies; prints
//                "in-call" after the first; exits 0 only if all N came in
//                order, intact, and the status is OK.
//   unary-burst  N unary calls at once (a thread each), each answered after
//                a 1 s delay; prints "calling" once all are started (for
//                tests that stop this process while the replies come);
//                exits 0 only if every reply came over shm, intact.
#include <grp.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "shmgrpc.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_logic.h"

namespace shmgrpc::test {
namespace {

// A call's context: with a deadline `deadline_ms` from now, unless 0.
class CallContext : public grpc::ClientContext {
 public:
  explicit CallContext(int deadline_ms) {
    if (deadline_ms > 0) {
      set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(deadline_ms));
    }
  }
};

constexpr char kUsage[] =
    "usage: %s --target=unix:/path [--calls=N] [--size=BYTES] "
    "[--mode=unary|hang-unary|stream|server-stream|server-stream-n|"
    "unary-burst] "
    "[--expect=shm|plain] "
    "[--deadline_ms=N] [--stream_window_messages=N] "
    "[--stream_window_bytes=N] [--uid=N] [--in_call_after=N]\n"
    "  --deadline_ms=N: every call's deadline (default: none)\n"
    "  --stream_window_messages=N: Options::stream_window_messages\n"
    "  --stream_window_bytes=N: Options::stream_window_bytes\n"
    "  --uid=N: run as uid and gid N (needs root; exit 3 if it cannot)\n"
    "  --in_call_after=N: server-stream: replies read before \"in-call\" "
    "(default 100)\n"
    "  --hold_ms=N: server-stream: then read none for N ms (default 0)\n";

int RunUnary(EchoService::Stub& stub, grpc::Channel& channel, int calls,
             size_t size, bool expect_shm, int deadline_ms) {
  for (int i = 0; i < calls; ++i) {
    EchoRequest request;
    FillRequest(&request, size, i);
    EchoResponse response;
    CallContext context(deadline_ms);
    grpc::Status status = stub.Unary(&context, request, &response);
    if (!status.ok()) {
      std::fprintf(stderr, "call %d: %s\n", i, status.error_message().c_str());
      return 1;
    }
    // The server-verified pid comes only with shm (plain calls carry none).
    const std::string want_pid = expect_shm ? std::to_string(getpid()) : "";
    if (!PayloadIntact(response) || response.seq() != i ||
        response.peer_pid() != want_pid) {
      std::fprintf(stderr, "call %d: wrong reply\n", i);
      return 1;
    }
  }
  const auto stats = GetChannelStats(&channel);
  const uint64_t want = expect_shm ? static_cast<uint64_t>(calls) : 0;
  if (stats->calls_on_shm != want) {
    std::fprintf(stderr, "%lu of %d calls went over shm, expected %lu\n",
                 static_cast<unsigned long>(stats->calls_on_shm), calls,
                 static_cast<unsigned long>(want));
    return 1;
  }
  return 0;
}

int RunUnaryBurst(EchoService::Stub& stub, int calls, size_t size,
                  int deadline_ms) {
  std::vector<std::thread> callers;
  std::vector<int> failed(calls, 0);
  for (int i = 0; i < calls; ++i) {
    callers.emplace_back([&, i] {
      EchoRequest request;
      FillRequest(&request, size, i);
      request.set_delay_ms(1000);
      EchoResponse response;
      CallContext context(deadline_ms);
      const grpc::Status status = stub.Unary(&context, request, &response);
      if (!status.ok()) {
        std::fprintf(stderr, "call %d: %s\n", i,
                     status.error_message().c_str());
        failed[i] = 1;
      } else if (!PayloadIntact(response) || response.seq() != i ||
                 response.peer_pid() != std::to_string(getpid())) {
        std::fprintf(stderr, "call %d: wrong reply\n", i);
        failed[i] = 1;
      }
    });
  }
  std::printf("calling\n");
  std::fflush(stdout);
  for (std::thread& caller : callers) caller.join();
  for (int f : failed) {
    if (f != 0) return 1;
  }
  return 0;
}

int RunHangingUnary(EchoService::Stub& stub, int deadline_ms) {
  EchoRequest request;
  request.set_hang(true);
  EchoResponse response;
  CallContext context(deadline_ms);
  std::printf("calling\n");
  std::fflush(stdout);
  stub.Unary(&context, request, &response);
  return 1;  // the test kills this process before the call ends
}

int RunStreamForever(EchoService::Stub& stub, size_t size, int deadline_ms) {
  CallContext context(deadline_ms);
  auto stream = stub.Bidi(&context);
  for (int64_t i = 0;; ++i) {
    EchoRequest request;
    FillRequest(&request, size, i);
    EchoResponse response;
    if (!stream->Write(request) || !stream->Read(&response)) {
      std::fprintf(stderr, "stream ended at %ld: %s\n", static_cast<long>(i),
                   stream->Finish().error_message().c_str());
      return 1;
    }
    if (i == 100) {
      std::printf("in-call\n");
      std::fflush(stdout);
    }
  }
}

int RunServerStream(EchoService::Stub& stub, int replies, size_t size,
                    int deadline_ms) {
  CallContext context(deadline_ms);
  EchoRequest request;
  request.set_reply_count(replies);
  request.set_reply_bytes(static_cast<uint32_t>(size));
  auto stream = stub.ServerStream(&context, request);
  EchoResponse response;
  int read = 0;
  for (; stream->Read(&response); ++read) {
    if (read == 0) {
      std::printf("in-call\n");
      std::fflush(stdout);
    }
    if (response.seq() != read || !PayloadIntact(response)) {
      std::fprintf(stderr, "reply %d: wrong or out of order (seq %ld)\n", read,
                   static_cast<long>(response.seq()));
      return 1;
    }
  }
  const grpc::Status status = stream->Finish();
  if (!status.ok() || read != replies) {
    std::fprintf(stderr, "%d of %d replies, then: %s\n", read, replies,
                 status.error_message().c_str());
    return 1;
  }
  return 0;
}

int RunServerStreamForever(EchoService::Stub& stub, size_t size,
                           int deadline_ms, int64_t in_call_after,
                           int hold_ms) {
  CallContext context(deadline_ms);
  EchoRequest request;
  request.set_reply_count(std::numeric_limits<int32_t>::max());
  request.set_reply_bytes(static_cast<uint32_t>(size));
  auto stream = stub.ServerStream(&context, request);
  EchoResponse response;
  int64_t read = 0;
  auto say_when_in_call = [&] {
    if (read != in_call_after) return;
    std::printf("in-call\n");
    std::fflush(stdout);
    absl::SleepFor(absl::Milliseconds(hold_ms));
  };
  if (in_call_after == 0) stream->WaitForInitialMetadata();
  say_when_in_call();
  while (stream->Read(&response)) {
    ++read;
    say_when_in_call();
  }
  std::fprintf(stderr, "stream ended: %s\n",
               stream->Finish().error_message().c_str());
  return 1;
}

int Main(int argc, char** argv) {
  std::string target;
  std::string mode = "unary";
  int calls = 100;
  size_t size = 1024;
  bool expect_shm = true;
  int uid = -1;
  int deadline_ms = 0;
  int64_t in_call_after = 100;
  int hold_ms = 0;
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    bool ok = true;
    if (absl::StartsWith(arg, "--target=")) {
      target = arg.substr(9);
    } else if (absl::StartsWith(arg, "--calls=")) {
      ok = absl::SimpleAtoi(arg.substr(8), &calls) && calls > 0;
    } else if (absl::StartsWith(arg, "--size=")) {
      ok = absl::SimpleAtoi(arg.substr(7), &size);
    } else if (absl::StartsWith(arg, "--mode=")) {
      mode = arg.substr(7);
      ok = mode == "unary" || mode == "hang-unary" || mode == "stream" ||
           mode == "server-stream" || mode == "server-stream-n" ||
           mode == "unary-burst";
    } else if (arg == "--expect=shm" || arg == "--expect=plain") {
      expect_shm = arg == "--expect=shm";
    } else if (absl::StartsWith(arg, "--deadline_ms=")) {
      ok = absl::SimpleAtoi(arg.substr(14), &deadline_ms) && deadline_ms >= 0;
    } else if (absl::StartsWith(arg, "--stream_window_messages=")) {
      ok = absl::SimpleAtoi(arg.substr(25), &options.stream_window_messages) &&
           options.stream_window_messages > 0;
    } else if (absl::StartsWith(arg, "--stream_window_bytes=")) {
      ok = absl::SimpleAtoi(arg.substr(22), &options.stream_window_bytes) &&
           options.stream_window_bytes > 0;
    } else if (absl::StartsWith(arg, "--in_call_after=")) {
      ok = absl::SimpleAtoi(arg.substr(16), &in_call_after) &&
           in_call_after >= 0;
    } else if (absl::StartsWith(arg, "--hold_ms=")) {
      ok = absl::SimpleAtoi(arg.substr(10), &hold_ms) && hold_ms >= 0;
    } else if (absl::StartsWith(arg, "--uid=")) {
      ok = absl::SimpleAtoi(arg.substr(6), &uid);
    } else {
      ok = false;
    }
    if (!ok) {
      std::fprintf(stderr, kUsage, argv[0]);
      std::fprintf(stderr, "bad argument: %s\n", arg.c_str());
      return 2;
    }
  }
  if (target.empty()) {
    std::fprintf(stderr, kUsage, argv[0]);
    return 2;
  }
  // Before anything starts a thread: the whole process becomes that user.
  if (uid >= 0 &&
      (setgroups(0, nullptr) != 0 || setgid(uid) != 0 || setuid(uid) != 0)) {
    std::fprintf(stderr, "cannot become uid %d: %s\n", uid, strerror(errno));
    return 3;
  }
  auto channel = CreateChannel(target, options);
  auto stub = EchoService::NewStub(channel);
  if (mode == "hang-unary") return RunHangingUnary(*stub, deadline_ms);
  if (mode == "stream") return RunStreamForever(*stub, size, deadline_ms);
  if (mode == "server-stream") {
    return RunServerStreamForever(*stub, size, deadline_ms, in_call_after,
                                  hold_ms);
  }
  if (mode == "server-stream-n") {
    return RunServerStream(*stub, calls, size, deadline_ms);
  }
  if (mode == "unary-burst") {
    return RunUnaryBurst(*stub, calls, size, deadline_ms);
  }
  return RunUnary(*stub, *channel, calls, size, expect_shm, deadline_ms);
}

}  // namespace
}  // namespace shmgrpc::test

int main(int argc, char** argv) { return shmgrpc::test::Main(argc, argv); }
