// multi_client_bench: many client processes against one server, the
// sidecar shape (one server process, one shm session per client process):
// shm vs gRPC over UDS, sync unary echo.
//
//   bazel run -c opt //benchmarks:multi_client_bench -- --quick
//
// For each client count K and size, every transport in turn (rotated start,
// repeated for --rounds) runs K client processes (this binary again, with
// --child) against one echo_server (sync service). Each client opens its
// channel, warms it up, waits for a common start time, then makes --calls
// sequential calls, timing each, and reports its CPU time over those calls.
// Per row: calls per second of all clients together, the median over clients
// of their p50 and p99 latency, and CPU time per call of the server and of
// the clients (user + system, measured over the timed calls only).
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "benchmarks/bench_flags.h"
#include "benchmarks/process_usage.h"
#include "grpcpp/grpcpp.h"
#include "shmgrpc.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_logic.h"
#include "tests/server_process.h"

namespace shmgrpc::bench {
namespace {

using test::EchoRequest;
using test::EchoResponse;
using test::EchoService;

constexpr const char* kTransports[] = {"shm", "uds"};
constexpr int kWarmupCalls = 100;

int64_t MonotonicNanos() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);  // one clock for all processes
  return int64_t{now.tv_sec} * 1000000000 + now.tv_nsec;
}

double CpuSeconds(const rusage& usage) {
  return usage.ru_utime.tv_sec + usage.ru_stime.tv_sec +
         (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

// What one client process reports on its stdout, one line.
struct ClientResult {
  int64_t calls = 0;
  int64_t start_ns = 0;
  int64_t end_ns = 0;
  double cpu_seconds = 0;
  double p50_us = 0;
  double p99_us = 0;
};

// --child: one client process. Exit code 0 and a result line, or 1 with the
// reason on stderr.
int ChildMain(const std::string& target, const std::string& transport,
              int calls, size_t size, int64_t start_ns) {
  std::shared_ptr<grpc::Channel> channel =
      transport == "shm"
          ? shmgrpc::CreateChannel(target, grpc::InsecureChannelCredentials())
          : grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  std::unique_ptr<EchoService::Stub> stub = EchoService::NewStub(channel);
  EchoRequest request;
  test::FillRequest(&request, size, 1);
  auto call = [&]() -> bool {
    EchoResponse response;
    grpc::ClientContext context;
    grpc::Status status = stub->Unary(&context, request, &response);
    if (!status.ok()) {
      std::fprintf(stderr, "call failed: %s\n", status.error_message().c_str());
      return false;
    }
    return true;
  };
  for (int i = 0; i < kWarmupCalls; ++i) {
    if (!call()) return 1;
  }
  while (MonotonicNanos() < start_ns) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  std::vector<double> latencies_us;
  latencies_us.reserve(calls);
  rusage before, after;
  getrusage(RUSAGE_SELF, &before);
  const int64_t started = MonotonicNanos();
  for (int i = 0; i < calls; ++i) {
    const int64_t t0 = MonotonicNanos();
    if (!call()) return 1;
    latencies_us.push_back((MonotonicNanos() - t0) / 1e3);
  }
  const int64_t ended = MonotonicNanos();
  getrusage(RUSAGE_SELF, &after);
  if (transport == "shm") {
    const ClientStats stats = *GetChannelStats(channel.get());
    if (stats.calls_on_shm < static_cast<uint64_t>(calls + kWarmupCalls)) {
      std::fprintf(stderr, "only %lu of %d calls went over shm\n",
                   static_cast<unsigned long>(stats.calls_on_shm),
                   calls + kWarmupCalls);
      return 1;
    }
  }
  std::printf("result %d %ld %ld %.6f %.2f %.2f\n", calls,
              static_cast<long>(started), static_cast<long>(ended),
              CpuSeconds(after) - CpuSeconds(before),
              Percentile(latencies_us, 0.5), Percentile(latencies_us, 0.99));
  return 0;
}

// A running client process and the read end of its stdout.
struct Client {
  pid_t pid = -1;
  FILE* out = nullptr;
};

Client SpawnClient(const std::vector<std::string>& args) {
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return {};
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(pipe_fds[1], STDOUT_FILENO);
    std::vector<char*> argv;
    for (const std::string& arg : args) {
      argv.push_back(const_cast<char*>(arg.c_str()));
    }
    argv.push_back(nullptr);
    execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  close(pipe_fds[1]);
  if (pid < 0) {
    close(pipe_fds[0]);
    return {};
  }
  return {pid, fdopen(pipe_fds[0], "r")};
}

// Reads a client's result and reaps it; false (with the reason printed) if
// it failed.
bool CollectClient(Client& client, ClientResult* result) {
  bool parsed = false;
  if (client.out != nullptr) {
    long calls = 0, start = 0, end = 0;
    parsed = std::fscanf(client.out, "result %ld %ld %ld %lf %lf %lf", &calls,
                         &start, &end, &result->cpu_seconds, &result->p50_us,
                         &result->p99_us) == 6;
    result->calls = calls;
    result->start_ns = start;
    result->end_ns = end;
    std::fclose(client.out);
  }
  int wait_status = 0;
  waitpid(client.pid, &wait_status, 0);
  const bool exited_ok =
      WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0;
  if (!parsed || !exited_ok) {
    std::fprintf(stderr, "client %d failed (wait status %d)\n", client.pid,
                 wait_status);
    return false;
  }
  return true;
}

struct Measurement {
  double qps = 0;
  double p50_us = 0;  // median over clients
  double p99_us = 0;  // median over clients
  double server_cpu_us_per_call = 0;
  double client_cpu_us_per_call = 0;
};

// K clients of one transport at once, against the server `server_pid`.
bool MeasureSlot(const std::string& target, pid_t server_pid,
                 const std::string& transport, int clients, int calls,
                 size_t size, Measurement* out) {
  // Late enough for every client to start, connect and warm up.
  const int64_t start_ns =
      MonotonicNanos() + 1500000000LL + int64_t{clients} * 150000000LL;
  std::vector<Client> running;
  bool ok = true;
  for (int i = 0; i < clients && ok; ++i) {
    const Client client = SpawnClient(
        {"multi_client_bench", "--child", "--target=" + target,
         "--transport=" + transport, "--calls=" + std::to_string(calls),
         "--sizes=" + std::to_string(size),
         "--start_ns=" + std::to_string(start_ns)});
    if (client.pid < 0) {
      std::fprintf(stderr, "cannot start a client process\n");
      ok = false;  // the ones started still run and are reaped below
    } else {
      running.push_back(client);
    }
  }
  while (ok && MonotonicNanos() < start_ns) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  OtherProcessUsage server_usage(server_pid);
  std::vector<ClientResult> results(running.size());
  for (size_t i = 0; i < running.size(); ++i) {
    ok = CollectClient(running[i], &results[i]) && ok;
  }
  const ProcessUsage server = server_usage.Since();
  if (!ok) return false;
  int64_t first_start = results[0].start_ns, last_end = results[0].end_ns;
  double total_calls = 0, client_cpu = 0;
  std::vector<double> p50s, p99s;
  for (const ClientResult& r : results) {
    first_start = std::min(first_start, r.start_ns);
    last_end = std::max(last_end, r.end_ns);
    total_calls += r.calls;
    client_cpu += r.cpu_seconds;
    p50s.push_back(r.p50_us);
    p99s.push_back(r.p99_us);
  }
  out->qps = total_calls / ((last_end - first_start) / 1e9);
  out->p50_us = Percentile(p50s, 0.5);
  out->p99_us = Percentile(p99s, 0.5);
  out->server_cpu_us_per_call = server.cpu_seconds * 1e6 / total_calls;
  out->client_cpu_us_per_call = client_cpu * 1e6 / total_calls;
  return true;
}

int Main(int argc, char** argv) {
  BenchFlags flags;
  flags.sizes = {64, 4096};
  std::vector<int> client_counts = {1, 4, 16};
  int calls = 0;
  bool child = false;
  std::string target, transport;
  int64_t start_ns = 0;
  bool rounds_given = false;
  ExtraFlags extra;
  extra.usage_synopsis = "[--clients=A,B,...] [--calls=N]";
  extra.usage_lines =
      "  --clients=...  client process counts (default 1,4,16)\n"
      "  --calls=N      timed calls per client process (default 4000; 1500 "
      "with --quick)\n"
      "  (here --rounds defaults to 3, and 1 with --quick)\n";
  extra.parse = [&](const std::string& arg, std::string* error) {
    if (absl::StartsWith(arg, "--clients=")) {
      client_counts.clear();
      for (absl::string_view c : absl::StrSplit(arg.substr(10), ',')) {
        int n = 0;
        if (!absl::SimpleAtoi(c, &n) || n < 1 || n > 256) {
          *error = "bad --clients entry (1..256): " + std::string(c);
        }
        client_counts.push_back(n);
      }
      return true;
    }
    if (absl::StartsWith(arg, "--calls=")) {
      if (!absl::SimpleAtoi(arg.substr(8), &calls) || calls < 1) {
        *error = "bad --calls: " + arg;
      }
      return true;
    }
    if (absl::StartsWith(arg, "--rounds=")) {
      rounds_given = true;
      return false;  // the common parser reads it
    }
    // Internal: the client processes' flags.
    if (arg == "--child") return (child = true);
    if (absl::StartsWith(arg, "--target="))
      return (target = arg.substr(9), true);
    if (absl::StartsWith(arg, "--transport=")) {
      return (transport = arg.substr(12), true);
    }
    if (absl::StartsWith(arg, "--start_ns=")) {
      if (!absl::SimpleAtoi(arg.substr(11), &start_ns)) {
        *error = "bad --start_ns: " + arg;
      }
      return true;
    }
    return false;
  };
  // A reply must stay under gRPC's default 4 MiB receive limit.
  if (!ParseBenchFlags(argc, argv, 0, (4 << 20) - 1024, &flags, &extra)) {
    return 2;
  }
  if (calls == 0) calls = flags.quick ? 1500 : 4000;
  if (child)
    return ChildMain(target, transport, calls, flags.sizes[0], start_ns);
  if (!rounds_given) flags.rounds = flags.quick ? 1 : 3;  // slots are long

  testing::ServerProcess server("sync");
  if (!server.status().ok()) {
    std::fprintf(stderr, "cannot start echo_server: %s\n",
                 server.status().ToString().c_str());
    return 1;
  }
  // measurements[size][clients][transport]
  std::vector<std::vector<std::vector<std::vector<Measurement>>>> measurements(
      flags.sizes.size(),
      std::vector<std::vector<std::vector<Measurement>>>(
          client_counts.size(), std::vector<std::vector<Measurement>>(2)));
  const int slots =
      flags.rounds *
      static_cast<int>(flags.sizes.size() * client_counts.size()) * 2;
  int slot = 0;
  for (int round = 0; round < flags.rounds; ++round) {
    for (size_t s = 0; s < flags.sizes.size(); ++s) {
      for (size_t k = 0; k < client_counts.size(); ++k) {
        for (int i = 0; i < 2; ++i) {
          const int t = (i + round + static_cast<int>(k)) % 2;
          std::fprintf(stderr, "\rslot %d/%d: %d clients, %s, %s      ", ++slot,
                       slots, client_counts[k],
                       SizeName(flags.sizes[s]).c_str(), kTransports[t]);
          Measurement m;
          if (!MeasureSlot(server.target(), server.pid(), kTransports[t],
                           client_counts[k], calls, flags.sizes[s], &m)) {
            return 1;
          }
          measurements[s][k][t].push_back(m);
        }
      }
    }
  }
  std::fprintf(stderr, "\rdone.%40s\n", "");

  std::printf(
      "multi_client_bench: sync unary echo, K client processes x %d "
      "sequential calls each, %d interleaved round(s)%s\n"
      "conditions: %s; one echo_server process (sync service); %s for "
      "all; shm session wait %s (spin up to %s, +%s per MiB after a large "
      "message); medians over rounds; server "
      "CPU read from /proc in 10 ms ticks\n\n",
      calls, flags.rounds, flags.quick ? " (--quick)" : "",
      CpuConditions().c_str(), AllocatorConditions().c_str(),
      std::string(shm::WaitStrategyName(Options().wait.strategy)).c_str(),
      absl::FormatDuration(Options().wait.max_spin).c_str(),
      absl::FormatDuration(Options().wait.spin_per_mib).c_str());
  std::printf("%-8s %-6s %-5s %10s %9s %9s %12s %12s %9s %9s\n", "size",
              "procs", "tport", "qps", "p50_us", "p99_us", "srv_cpu_us",
              "cli_cpu_us", "qps/uds", "cpu/uds");
  FILE* json = nullptr;
  if (!flags.json_path.empty()) {
    json = std::fopen(flags.json_path.c_str(), "w");
    if (json == nullptr) {
      std::fprintf(stderr, "cannot write %s\n", flags.json_path.c_str());
      return 1;
    }
    std::fprintf(json, "[\n");
  }
  bool first_row = true;
  for (size_t s = 0; s < flags.sizes.size(); ++s) {
    for (size_t k = 0; k < client_counts.size(); ++k) {
      Measurement median[2];
      for (int t = 0; t < 2; ++t) {
        auto mid = [&](double Measurement::*field) {
          std::vector<double> values;
          for (const Measurement& m : measurements[s][k][t]) {
            values.push_back(m.*field);
          }
          return Percentile(values, 0.5);
        };
        median[t] = {mid(&Measurement::qps), mid(&Measurement::p50_us),
                     mid(&Measurement::p99_us),
                     mid(&Measurement::server_cpu_us_per_call),
                     mid(&Measurement::client_cpu_us_per_call)};
      }
      const Measurement& uds = median[1];
      for (int t = 0; t < 2; ++t) {
        const Measurement& m = median[t];
        const double cpu = m.server_cpu_us_per_call + m.client_cpu_us_per_call;
        const double uds_cpu =
            uds.server_cpu_us_per_call + uds.client_cpu_us_per_call;
        std::printf(
            "%-8s %-6d %-5s %10.0f %9.1f %9.1f %12.1f %12.1f %9.2f %9.2f\n",
            SizeName(flags.sizes[s]).c_str(), client_counts[k], kTransports[t],
            m.qps, m.p50_us, m.p99_us, m.server_cpu_us_per_call,
            m.client_cpu_us_per_call, m.qps / uds.qps, cpu / uds_cpu);
        if (json != nullptr) {
          std::fprintf(
              json,
              "%s  {\"transport\": \"%s\", \"size\": %zu, \"processes\": %d, "
              "\"qps\": %.1f, \"p50_us\": %.2f, \"p99_us\": %.2f, "
              "\"server_cpu_us_per_call\": %.2f, "
              "\"client_cpu_us_per_call\": %.2f}",
              first_row ? "" : ",\n", kTransports[t], flags.sizes[s],
              client_counts[k], m.qps, m.p50_us, m.p99_us,
              m.server_cpu_us_per_call, m.client_cpu_us_per_call);
          first_row = false;
        }
      }
    }
  }
  if (json != nullptr) {
    std::fprintf(json, "\n]\n");
    std::fclose(json);
  }
  return 0;
}

}  // namespace
}  // namespace shmgrpc::bench

int main(int argc, char** argv) { return shmgrpc::bench::Main(argc, argv); }
