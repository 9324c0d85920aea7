// grpc_echo_bench: unary echo over shm vs plain gRPC over UDS vs gRPC
// in-process (the floor for an unchanged grpc::Server), in one run.
//
// shm and UDS talk to a separate echo_server process (sync service, or
// --style=callback|async); the in-process transport uses a server inside this
// process with the same service. Rounds are interleaved (every transport at
// every size in each round, starting transport rotated), so noise hits all
// alike. Every call carries a real protobuf message with an N-byte payload that
// the server checksums and echoes; the client checks the first reply of each
// batch.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "benchmarks/bench_flags.h"
#include "grpcpp/grpcpp.h"
#include "shmgrpc.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_logic.h"
#include "tests/server_process.h"

namespace shmgrpc::bench {
namespace {

using Clock = std::chrono::steady_clock;
using test::EchoRequest;
using test::EchoResponse;
using test::EchoService;

// Runs `calls` echo calls (plus one unmeasured warm-up) and appends latencies.
bool Measure(EchoService::Stub* stub, size_t size, int calls,
             std::vector<double>* samples) {
  EchoRequest request;
  test::FillRequest(&request, size, 1);
  for (int i = 0; i <= calls; ++i) {
    EchoResponse response;
    grpc::ClientContext context;
    const Clock::time_point start = Clock::now();
    grpc::Status status = stub->Unary(&context, request, &response);
    const double us =
        std::chrono::duration<double, std::micro>(Clock::now() - start).count();
    if (!status.ok()) {
      std::fprintf(stderr, "call failed: %s\n", status.error_message().c_str());
      return false;
    }
    if (i == 0 && !test::PayloadIntact(response)) {
      std::fprintf(stderr, "corrupt reply at %zu bytes\n", size);
      return false;
    }
    if (i > 0) samples->push_back(us);
  }
  return true;
}

int Main(int argc, char** argv) {
  BenchFlags flags;
  flags.sizes = {64, 4096, 64 << 10, 1 << 20};
  std::string style = "sync";
  ExtraFlags extra;
  extra.usage_synopsis = "[--style=sync|callback|async]";
  extra.usage_lines =
      "  --style=...  the echo service's API, in echo_server and in-process "
      "(default sync)\n";
  extra.parse = [&](const std::string& arg, std::string* error) {
    if (!absl::StartsWith(arg, "--style=")) return false;
    style = arg.substr(8);
    if (!test::IsEchoStyle(style)) {
      *error = "bad --style: " + arg;
    }
    return true;
  };
  // A reply must stay under gRPC's default 4 MiB receive limit.
  if (!ParseBenchFlags(argc, argv, 0, (4 << 20) - 1024, &flags, &extra)) {
    return 2;
  }
  testing::ServerProcess server(style);
  if (!server.status().ok()) {
    std::fprintf(stderr, "cannot start echo_server: %s\n",
                 server.status().ToString().c_str());
    return 1;
  }
  // The in-process reference: the same service inside this process, with
  // the same interceptor as echo_server (it leaves in-process calls alone,
  // as it does UDS ones, but they pay for its being there).
  grpc::ServerBuilder builder;
  builder.experimental().SetInterceptorCreators(ArenaReplyCreators());
  test::EchoServiceOfStyle service(style, &builder);
  std::unique_ptr<grpc::Server> inproc_server = builder.BuildAndStart();
  service.Run();
  grpc::ChannelArguments inproc_args;
  inproc_args.SetMaxReceiveMessageSize(-1);

  const char* names[] = {"shm", "uds", "inproc"};
  std::shared_ptr<grpc::Channel> channels[] = {
      CreateChannel(server.target()),
      grpc::CreateChannel(server.target(), grpc::InsecureChannelCredentials()),
      inproc_server->InProcessChannel(inproc_args)};
  std::unique_ptr<EchoService::Stub> stubs[3];
  for (int t = 0; t < 3; ++t) stubs[t] = EchoService::NewStub(channels[t]);

  // samples[size][transport]
  std::vector<std::vector<std::vector<double>>> samples(
      flags.sizes.size(), std::vector<std::vector<double>>(3));
  for (int round = 0; round < flags.rounds; ++round) {
    std::fprintf(stderr, "\rround %d/%d", round + 1, flags.rounds);
    for (size_t s = 0; s < flags.sizes.size(); ++s) {
      const size_t size = flags.sizes[s];
      const int full = size <= 4096 ? 2000 : size <= 65536 ? 500 : 60;
      const int calls = flags.quick ? std::max(10, full / 4) : full;
      for (int k = 0; k < 3; ++k) {
        const int t = (k + round) % 3;
        if (!Measure(stubs[t].get(), size, calls, &samples[s][t])) return 1;
      }
    }
  }
  std::fprintf(stderr, "\rdone.          \n");
  const ClientStats stats = *GetChannelStats(channels[0].get());

  std::printf(
      "grpc_echo_bench: unary echo (%s service), %d interleaved rounds%s\n"
      "conditions: %s; shm and uds: client and echo_server in two "
      "processes; inproc: same service in this process (both servers "
      "with the arena-reply interceptor); %s "
      "for all; shm session wait %s (spin up to %s, +%s per MiB after a large "
      "message); server checksums and "
      "echoes the payload\n"
      "shm calls on shared memory: %lu, plain: %lu\n\n",
      style.c_str(), flags.rounds, flags.quick ? " (--quick)" : "",
      CpuConditions().c_str(), AllocatorConditions().c_str(),
      std::string(shm::WaitStrategyName(Options().wait.strategy)).c_str(),
      absl::FormatDuration(Options().wait.max_spin).c_str(),
      absl::FormatDuration(Options().wait.spin_per_mib).c_str(),
      static_cast<unsigned long>(stats.calls_on_shm),
      static_cast<unsigned long>(stats.calls_plain()));
  std::printf("%-8s %-8s %10s %10s %12s %12s\n", "size", "transport", "p50_us",
              "p99_us", "p50/uds", "p50/inproc");
  for (size_t s = 0; s < flags.sizes.size(); ++s) {
    const double uds = Percentile(samples[s][1], 0.5);
    const double inproc = Percentile(samples[s][2], 0.5);
    for (int t = 0; t < 3; ++t) {
      const double p50 = Percentile(samples[s][t], 0.5);
      std::printf("%-8s %-8s %10.1f %10.1f %12.3f %12.3f\n",
                  SizeName(flags.sizes[s]).c_str(), names[t], p50,
                  Percentile(samples[s][t], 0.99), p50 / uds, p50 / inproc);
    }
  }
  if (!flags.json_path.empty()) {
    FILE* out = std::fopen(flags.json_path.c_str(), "w");
    if (out == nullptr) {
      std::fprintf(stderr, "cannot write %s\n", flags.json_path.c_str());
      return 1;
    }
    std::fprintf(out, "[\n");
    bool first = true;
    for (size_t s = 0; s < flags.sizes.size(); ++s) {
      for (int t = 0; t < 3; ++t) {
        std::fprintf(out,
                     "%s  {\"transport\": \"%s\", \"size\": %zu, \"p50_us\": "
                     "%.2f, \"p99_us\": %.2f}",
                     first ? "" : ",\n", names[t], flags.sizes[s],
                     Percentile(samples[s][t], 0.5),
                     Percentile(samples[s][t], 0.99));
        first = false;
      }
    }
    std::fprintf(out, "\n]\n");
    std::fclose(out);
  }
  inproc_server->Shutdown();
  service.Stop();
  return 0;
}

}  // namespace
}  // namespace shmgrpc::bench

int main(int argc, char** argv) { return shmgrpc::bench::Main(argc, argv); }
