// ab_bench: the A/B benchmark: shm (each wait strategy) vs gRPC over UDS vs
// TCP loopback vs in-process, for unary calls, streaming ping-pong and
// streaming one-way throughput, across message sizes and concurrency.
//
//   bazel run -c opt //benchmarks:ab_bench -- --quick
//
// It starts its own echo_server processes (one per shm wait strategy, so a
// spinning strategy never runs beside another transport's measurement; the
// notify one also serves UDS and TCP), or talks to one given by --target.
// Each measurement slot opens a fresh channel, warms it up, then runs for
// --duration with N caller threads; slots are interleaved (every transport
// for a cell, rotated start) and repeated for --rounds, so noise on this
// shared machine hits every transport alike. Every call carries a real
// protobuf message whose payload the server checksums; replies are checked.
// Per row: latency percentiles, QPS, payload MB/s, CPU time and context
// switches per call of both processes, and shm fallbacks.
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "benchmarks/ab_report.h"
#include "benchmarks/bench_flags.h"
#include "benchmarks/process_usage.h"
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

const std::vector<std::string> kAllTransports = {
    "shm-notify", "shm-poll", "shm-periodic", "uds", "tcp", "inproc"};
const std::vector<std::string> kAllShapes = {"unary", "pingpong", "oneway"};

struct AbFlags {
  BenchFlags common;
  bool sizes_given = false;
  bool rounds_given = false;
  absl::Duration duration = absl::Seconds(1);
  bool duration_given = false;
  std::vector<std::string> transports = kAllTransports;
  std::vector<std::string> shapes = kAllShapes;
  std::vector<int> concurrency = {1, 8, 64};
  std::string csv_path;
  std::string svg_path;
  std::string target;      // an existing server instead of our own
  std::string tcp_target;  // with --target: its TCP address, if any
  std::string malloc_env;  // K=V,... for every process
  bool pin = false;
  std::string style = "sync";  // the echo service's API, everywhere
  // Unary and one-way calls carry a deadline this far ahead (0: none).
  absl::Duration call_deadline = absl::ZeroDuration();
};

// A cell of the plan: what is measured, for every transport.
struct Cell {
  std::string shape;
  size_t size;
  int concurrency;
};

// Where a transport's calls go, and which process serves them.
struct TransportSpec {
  std::string name;
  std::function<std::shared_ptr<grpc::Channel>()> make_channel;
  pid_t server_pid = -1;  // -1: served inside this process
  bool shm = false;
};

// What the slots of one (cell, transport) add up to.
struct Accumulated {
  std::vector<double> latencies_us;
  uint64_t calls = 0;
  double seconds = 0;
  ProcessUsage usage;
  uint64_t fallbacks = 0;
};

std::vector<std::string> SplitList(const std::string& value) {
  return absl::StrSplit(value, ',', absl::SkipEmpty());
}

bool Contains(const std::vector<std::string>& list, const std::string& x) {
  return std::find(list.begin(), list.end(), x) != list.end();
}

bool ParseAbFlags(int argc, char** argv, AbFlags* flags) {
  flags->common.sizes = {64, 4096, 65536, 1 << 20, 4 << 20};
  ExtraFlags extra;
  extra.usage_synopsis =
      "[--duration=S] [--transports=..] [--shapes=..] [--concurrency=..] "
      "[--csv=FILE] [--svg=FILE] [--target=unix:/p [--tcp_target=H:P]] "
      "[--malloc_env=K=V,..] [--pin] [--style=sync|callback|async] "
      "[--deadline_ms=N]";
  extra.usage_lines =
      "  --duration=S        seconds per measurement slot (default 1; 0.5 "
      "with --quick)\n"
      "  --transports=...    of shm-notify,shm-poll,shm-periodic,uds,tcp,"
      "inproc (default all)\n"
      "  --shapes=...        of unary,pingpong,oneway (default all)\n"
      "  --concurrency=...   caller threads (default 1,8,64); levels above\n"
      "                      1 run unary 4 KiB and, each caller on its own\n"
      "                      stream, ping-pong 4 KiB\n"
      "  --csv=FILE, --svg=FILE  also write the rows as CSV / a chart\n"
      "  --target=unix:/p    use a running server (shm-notify and uds only,\n"
      "                      tcp with --tcp_target) instead of starting one\n"
      "  --malloc_env=K=V,.. allocator environment for every process, e.g.\n"
      "                      MALLOC_ARENA_MAX=2 (default: glibc defaults)\n"
      "  --pin               pin this process to CPU 0 and servers to CPU 1\n"
      "  --style=...         the echo service's API in echo_server and in-\n"
      "                      process (default sync; async serves unary and\n"
      "                      pingpong from a completion queue, oneway sync)\n"
      "  --deadline_ms=N     unary and one-way calls carry a deadline N ms\n"
      "                      ahead, as production calls do (default none)\n"
      "  (here --rounds defaults to 3, and 2 with --quick)\n";
  extra.parse = [&](const std::string& arg, std::string* error) {
    auto value = [&](absl::string_view prefix) -> std::optional<std::string> {
      if (!absl::StartsWith(arg, prefix)) return std::nullopt;
      return arg.substr(prefix.size());
    };
    if (absl::StartsWith(arg, "--sizes=")) {
      flags->sizes_given = true;
      return false;  // the common parser reads it
    }
    if (absl::StartsWith(arg, "--rounds=")) {
      flags->rounds_given = true;
      return false;
    }
    if (auto v = value("--duration=")) {
      double seconds;
      if (!absl::SimpleAtod(*v, &seconds) || seconds <= 0 || seconds > 600) {
        *error = "bad --duration: " + arg;
      }
      flags->duration = absl::Seconds(seconds);
      flags->duration_given = true;
      return true;
    }
    if (auto v = value("--transports=")) {
      flags->transports = SplitList(*v);
      for (const std::string& t : flags->transports) {
        if (!Contains(kAllTransports, t)) *error = "unknown transport: " + t;
      }
      if (flags->transports.empty()) *error = "no transports";
      return true;
    }
    if (auto v = value("--shapes=")) {
      flags->shapes = SplitList(*v);
      for (const std::string& s : flags->shapes) {
        if (!Contains(kAllShapes, s)) *error = "unknown shape: " + s;
      }
      if (flags->shapes.empty()) *error = "no shapes";
      return true;
    }
    if (auto v = value("--concurrency=")) {
      flags->concurrency.clear();
      for (const std::string& c : SplitList(*v)) {
        int n;
        if (!absl::SimpleAtoi(c, &n) || n < 1 || n > 256) {
          *error = "bad --concurrency entry: " + c;
        }
        flags->concurrency.push_back(n);
      }
      return true;
    }
    if (auto v = value("--csv=")) return (flags->csv_path = *v), true;
    if (auto v = value("--svg=")) return (flags->svg_path = *v), true;
    if (auto v = value("--target=")) {
      flags->target = *v;
      if (UnixPathOf(*v).empty()) *error = "--target must be unix:/path";
      return true;
    }
    if (auto v = value("--tcp_target=")) return (flags->tcp_target = *v), true;
    if (auto v = value("--malloc_env=")) {
      flags->malloc_env = *v;
      for (const std::string& kv : SplitList(*v)) {
        if (kv.find('=') == std::string::npos) *error = "bad --malloc_env";
      }
      return true;
    }
    if (arg == "--pin") return (flags->pin = true), true;
    if (auto v = value("--deadline_ms=")) {
      int ms;
      if (!absl::SimpleAtoi(*v, &ms) || ms < 1) {
        *error = "bad --deadline_ms: " + arg;
      }
      flags->call_deadline = absl::Milliseconds(ms);
      return true;
    }
    if (auto v = value("--style=")) {
      flags->style = *v;
      if (!test::IsEchoStyle(*v)) *error = "bad --style: " + arg;
      return true;
    }
    return false;
  };
  if (!ParseBenchFlags(argc, argv, 0, 16 << 20, &flags->common, &extra)) {
    return false;
  }
  if (flags->common.quick && !flags->duration_given) {
    flags->duration = absl::Milliseconds(500);
  }
  if (!flags->rounds_given) {
    // Slots are long: 3 interleaved rounds, 2 with --quick.
    flags->common.rounds = flags->common.quick ? 2 : 3;
  }
  if (!flags->target.empty()) {
    std::vector<std::string> usable;
    for (const std::string& t : flags->transports) {
      if (t == "shm-notify" || t == "uds" || t == "inproc" ||
          (t == "tcp" && !flags->tcp_target.empty())) {
        usable.push_back(t);
      }
    }
    flags->transports = usable;
  }
  return true;
}

// Runs this process again with the allocator environment set, so the
// allocator is configured before its first use. Returns only on failure.
void ReexecWithMallocEnv(const std::string& malloc_env, char** argv) {
  if (malloc_env.empty() || std::getenv("SHMGRPC_AB_ENV_APPLIED")) return;
  for (const std::string& kv : SplitList(malloc_env)) {
    const size_t eq = kv.find('=');
    setenv(kv.substr(0, eq).c_str(), kv.substr(eq + 1).c_str(), 1);
  }
  setenv("SHMGRPC_AB_ENV_APPLIED", "1", 1);
  execv("/proc/self/exe", argv);
  std::perror("re-exec with --malloc_env");
}

void PinProcess(pid_t pid, int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  // Every thread: threads created later inherit from their creator.
  const std::string dir = "/proc/" + std::to_string(pid) + "/task";
  std::unique_ptr<FILE, int (*)(FILE*)> ls(popen(("ls " + dir).c_str(), "r"),
                                           pclose);
  char line[64];
  while (ls && std::fgets(line, sizeof(line), ls.get()) != nullptr) {
    sched_setaffinity(std::atoi(line), sizeof(set), &set);
  }
}

grpc::ChannelArguments UnlimitedArgs() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  return args;
}

Options ShmOptions(shm::WaitStrategy strategy) {
  Options options;
  options.wait.strategy = strategy;
  options.max_message_bytes = 64 << 20;  // the 4 MiB rows, as for the others
  return options;
}

// One caller thread of a slot.
class Worker {
 public:
  Worker(EchoService::Stub* stub, const Cell& cell, absl::Duration deadline)
      : stub_(stub), cell_(cell), deadline_(deadline) {
    test::FillRequest(&request_, cell.size, 1);
  }

  // Opens streams and makes a few unmeasured calls.
  bool WarmUp() {
    if (cell_.shape == "pingpong") {
      stream_context_ = std::make_unique<grpc::ClientContext>();
      stream_ = stub_->Bidi(stream_context_.get());
    }
    for (int i = 0; i < 3; ++i) {
      if (!Once(nullptr)) return false;
    }
    return true;
  }
  // Measures until `stop`.
  void Run(const std::atomic<bool>& stop) {
    while (!stop.load(std::memory_order_relaxed) && error_.empty()) {
      Once(&latencies_us_);
    }
    if (stream_) {
      stream_->WritesDone();
      const grpc::Status status = stream_->Finish();
      if (!status.ok() && error_.empty()) {
        error_ = "stream: " + status.error_message();
      }
    }
  }
  const std::vector<double>& latencies_us() const { return latencies_us_; }
  uint64_t calls() const { return calls_; }
  const std::string& error() const { return error_; }

 private:
  // One operation; appends per-call (or, one-way, per-message) latencies.
  // The clock times gRPC's work (a unary call's ClientContext included);
  // each reply is checked after it stops, so a check of a 4 MiB payload
  // does not count as transport time (the same for every transport).
  bool Once(std::vector<double>* out) {
    const Clock::time_point start = Clock::now();
    Clock::time_point end;
    int messages = 1;
    EchoResponse response;
    if (cell_.shape == "unary") {
      grpc::Status status;
      {
        grpc::ClientContext context;
        SetDeadline(&context);
        status = stub_->Unary(&context, request_, &response);
      }
      end = Clock::now();
      Check(status, response);
    } else if (cell_.shape == "pingpong") {
      const bool echoed = stream_->Write(request_) && stream_->Read(&response);
      end = Clock::now();
      if (!echoed) {
        error_ = "stream broke";
      } else if (!test::PayloadIntact(response)) {
        error_ = "corrupt reply";
      }
    } else {
      // One-way: a client stream of enough messages to amortize its setup;
      // the server checks every payload and answers once.
      messages = static_cast<int>(std::clamp<size_t>(
          (4 << 20) / std::max<size_t>(cell_.size, 1), 4, 1000));
      grpc::ClientContext context;
      SetDeadline(&context);
      auto writer = stub_->ClientStream(&context, &response);
      for (int i = 0; i < messages; ++i) {
        if (!writer->Write(request_)) break;
      }
      writer->WritesDone();
      const grpc::Status status = writer->Finish();
      end = Clock::now();
      if (!status.ok()) {
        error_ = "one-way: " + status.error_message();
      } else if (response.messages_seen() != messages) {
        error_ = "one-way: server saw " +
                 std::to_string(response.messages_seen()) + " of " +
                 std::to_string(messages);
      }
    }
    const double us =
        std::chrono::duration<double, std::micro>(end - start).count();
    if (!error_.empty()) return false;
    if (out != nullptr) {
      out->push_back(us / messages);
      calls_ += messages;
    }
    return true;
  }
  void Check(const grpc::Status& status, const EchoResponse& response) {
    if (!status.ok()) {
      error_ = "call: " + status.error_message();
    } else if (response.payload().size() != cell_.size ||
               !test::PayloadIntact(response)) {
      error_ = "corrupt reply";
    }
  }

  void SetDeadline(grpc::ClientContext* context) const {
    if (deadline_ > absl::ZeroDuration()) {
      context->set_deadline(absl::ToChronoTime(absl::Now() + deadline_));
    }
  }

  EchoService::Stub* const stub_;
  const Cell cell_;
  const absl::Duration deadline_;
  EchoRequest request_;

  std::unique_ptr<grpc::ClientContext> stream_context_;
  std::unique_ptr<grpc::ClientReaderWriter<EchoRequest, EchoResponse>> stream_;
  std::vector<double> latencies_us_;
  uint64_t calls_ = 0;
  std::string error_;
};

// One measurement slot: a fresh channel, warm-up, then `duration` of calls.
bool RunSlot(const TransportSpec& transport, const Cell& cell,
             absl::Duration duration, absl::Duration call_deadline,
             Accumulated* into) {
  std::shared_ptr<grpc::Channel> channel = transport.make_channel();
  auto stub = EchoService::NewStub(channel);
  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < cell.concurrency; ++i) {
    workers.push_back(
        std::make_unique<Worker>(stub.get(), cell, call_deadline));
  }
  // Warm up in parallel (64 streams one by one would take long).
  std::atomic<int> warm{0}, failed{0};
  std::atomic<bool> go{false}, stop{false};
  std::vector<std::thread> threads;
  for (auto& worker : workers) {
    threads.emplace_back([&, w = worker.get()] {
      if (!w->WarmUp()) ++failed;
      ++warm;
      while (!go.load()) std::this_thread::yield();
      if (failed.load() == 0) w->Run(stop);
    });
  }
  while (warm.load() < cell.concurrency) std::this_thread::yield();
  const ProcessUsage self_before = SelfUsage();
  std::optional<OtherProcessUsage> server_usage;
  if (transport.server_pid > 0) server_usage.emplace(transport.server_pid);
  const Clock::time_point start = Clock::now();
  go = true;
  absl::SleepFor(duration);
  stop = true;
  for (std::thread& t : threads) t.join();
  const double seconds =
      std::chrono::duration<double>(Clock::now() - start).count();
  ProcessUsage used = SelfUsage() - self_before;
  if (server_usage) {
    const ProcessUsage server = server_usage->Since();
    used.cpu_seconds += server.cpu_seconds;
    used.context_switches += server.context_switches;
  }
  for (const auto& w : workers) {
    if (!w->error().empty()) {
      std::fprintf(stderr, "\n%s %s %zu x%d: %s\n", transport.name.c_str(),
                   cell.shape.c_str(), cell.size, cell.concurrency,
                   w->error().c_str());
      return false;
    }
    into->latencies_us.insert(into->latencies_us.end(),
                              w->latencies_us().begin(),
                              w->latencies_us().end());
    into->calls += w->calls();
  }
  into->seconds += seconds;
  into->usage.cpu_seconds += used.cpu_seconds;
  into->usage.context_switches += used.context_switches;
  if (transport.shm) {
    const ClientStats stats = *GetChannelStats(channel.get());
    into->fallbacks +=
        stats.calls_plain() + stats.inline_arena_full + stats.inline_too_large;
  }
  return true;
}

std::vector<Cell> MakePlan(const AbFlags& flags) {
  std::vector<Cell> plan;
  for (const std::string& shape : flags.shapes) {
    for (size_t size : flags.common.sizes) {
      // Streams stop at 1 MiB unless sizes were asked for explicitly.
      if (shape != "unary" && !flags.sizes_given && size > (1 << 20)) continue;
      plan.push_back({shape, size, 1});
    }
  }
  // Parallel callers: unary calls, and ping-pong on one stream per caller
  // (Shmipc's BenchmarkParallelPingPong).
  for (const char* shape : {"unary", "pingpong"}) {
    if (!Contains(flags.shapes, shape)) continue;
    for (int c : flags.concurrency) {
      if (c > 1) plan.push_back({shape, 4096, c});
    }
  }
  return plan;
}

std::string Conditions(const AbFlags& flags) {
  return absl::StrCat(
      CpuConditions(), "; ", AllocatorConditions(),
      " for all processes; shm session spin ",
      absl::FormatDuration(Options().wait.max_spin), " yielding after ",
      absl::FormatDuration(Options().wait.pause_spin), ", +",
      absl::FormatDuration(Options().wait.spin_per_mib),
      " per MiB after a large message", " (notify), poll spins, ", "periodic ",
      absl::FormatDuration(Options().wait.period), "; ", flags.common.rounds,
      " interleaved rounds x ", absl::FormatDuration(flags.duration),
      " per slot",
      flags.pin ? "; client on CPU 0, servers on CPU 1" : "; unpinned",
      flags.call_deadline > absl::ZeroDuration()
          ? absl::StrCat("; unary and one-way calls with a ",
                         absl::FormatDuration(flags.call_deadline), " deadline")
          : "");
}

// Prints how the results compare with the targets of the A/B issue.
void PrintSummary(const std::vector<AbRow>& rows) {
  auto find = [&](const std::string& transport, const std::string& shape,
                  size_t size, int conc) -> const AbRow* {
    for (const AbRow& r : rows) {
      if (r.transport == transport && r.shape == shape && r.size == size &&
          r.concurrency == conc) {
        return &r;
      }
    }
    return nullptr;
  };
  std::printf("\nshm-notify vs the others (unary, concurrency 1, p50):\n");
  for (size_t size : {size_t{64}, size_t{4096}, size_t{65536}, size_t{1} << 20,
                      size_t{4} << 20}) {
    const AbRow* shm = find("shm-notify", "unary", size, 1);
    const AbRow* uds = find("uds", "unary", size, 1);
    const AbRow* inproc = find("inproc", "unary", size, 1);
    if (shm == nullptr || uds == nullptr) continue;
    std::printf("  %-6s shm/uds %.3f  (uds/shm %.2f)", SizeName(size).c_str(),
                shm->p50_us / uds->p50_us, uds->p50_us / shm->p50_us);
    if (inproc != nullptr) {
      std::printf("  shm/inproc %.3f", shm->p50_us / inproc->p50_us);
    }
    std::printf("  cpu/call shm/uds %.2f\n",
                shm->cpu_us_per_call / uds->cpu_us_per_call);
  }
  for (const char* shape : {"unary", "pingpong"}) {
    for (int conc : {8, 64}) {
      const AbRow* shm = find("shm-notify", shape, 4096, conc);
      const AbRow* uds = find("uds", shape, 4096, conc);
      if (shm == nullptr || uds == nullptr) continue;
      std::printf("  %s 4KiB x%d: QPS shm/uds %.2f, cpu/call shm/uds %.2f\n",
                  shape, conc, shm->qps / uds->qps,
                  shm->cpu_us_per_call / uds->cpu_us_per_call);
    }
  }
}

int Main(int argc, char** argv) {
  AbFlags flags;
  if (!ParseAbFlags(argc, argv, &flags)) return 2;
  ReexecWithMallocEnv(flags.malloc_env, argv);
  const bool pin = flags.pin && sysconf(_SC_NPROCESSORS_ONLN) >= 2;
  if (pin) PinProcess(getpid(), 0);

  // Servers: one per shm wait strategy in use; the notify one also serves
  // UDS and TCP.
  std::map<std::string, std::unique_ptr<testing::ServerProcess>> servers;
  std::vector<TransportSpec> transports;
  const int tcp_port = testing::FreeTcpPort();
  auto server_for = [&](const std::string& wait) -> testing::ServerProcess* {
    auto& server = servers[wait];
    if (!server) {
      std::vector<std::string> args = {"--wait=" + wait};
      if (wait == "notify") {
        args.push_back("--tcp_port=" + std::to_string(tcp_port));
      }
      server = std::make_unique<testing::ServerProcess>(flags.style, args);
      if (!server->status().ok()) {
        std::fprintf(stderr, "cannot start echo_server: %s\n",
                     server->status().ToString().c_str());
        return nullptr;
      }
      if (pin) PinProcess(server->pid(), 1);
    }
    return server.get();
  };
  // The in-process reference: the same service inside this process, with
  // the same interceptor as echo_server (it leaves in-process calls alone,
  // as it does UDS ones, but they pay for its being there).
  grpc::ServerBuilder builder;
  builder.experimental().SetInterceptorCreators(ArenaReplyCreators());
  test::EchoServiceOfStyle inproc_service(flags.style, &builder);
  builder.SetMaxReceiveMessageSize(-1);
  std::unique_ptr<grpc::Server> inproc_server;

  for (const std::string& name : flags.transports) {
    TransportSpec spec;
    spec.name = name;
    if (absl::StartsWith(name, "shm-")) {
      const std::string wait = name.substr(4);
      const shm::WaitStrategy strategy = *shm::ParseWaitStrategy(wait);
      std::string target = flags.target;
      if (target.empty()) {
        testing::ServerProcess* server = server_for(wait);
        if (server == nullptr) return 1;
        target = server->target();
        spec.server_pid = server->pid();
      }
      spec.shm = true;
      spec.make_channel = [target, strategy] {
        return CreateChannel(target, ShmOptions(strategy), UnlimitedArgs());
      };
    } else if (name == "uds" || name == "tcp") {
      std::string target = name == "uds" ? flags.target : flags.tcp_target;
      if (flags.target.empty()) {
        testing::ServerProcess* server = server_for("notify");
        if (server == nullptr) return 1;
        target = name == "uds" ? server->target()
                               : "127.0.0.1:" + std::to_string(tcp_port);
        spec.server_pid = server->pid();
      }
      spec.make_channel = [target] {
        return grpc::CreateCustomChannel(
            target, grpc::InsecureChannelCredentials(), UnlimitedArgs());
      };
    } else {  // inproc
      if (!inproc_server) {
        inproc_server = builder.BuildAndStart();
        inproc_service.Run();
      }
      grpc::Server* server = inproc_server.get();
      spec.make_channel = [server] {
        return server->InProcessChannel(UnlimitedArgs());
      };
    }
    transports.push_back(std::move(spec));
  }

  const std::vector<Cell> plan = MakePlan(flags);
  // results[cell][transport]
  std::vector<std::vector<Accumulated>> results(
      plan.size(), std::vector<Accumulated>(transports.size()));
  const size_t slots = plan.size() * transports.size() * flags.common.rounds;
  std::fprintf(stderr,
               "ab_bench: %zu cells x %zu transports x %d rounds = %zu slots "
               "of %s\n",
               plan.size(), transports.size(), flags.common.rounds, slots,
               absl::FormatDuration(flags.duration).c_str());
  size_t done = 0;
  const absl::Time started = absl::Now();
  for (int round = 0; round < flags.common.rounds; ++round) {
    for (size_t c = 0; c < plan.size(); ++c) {
      for (size_t k = 0; k < transports.size(); ++k) {
        const size_t t = (k + c + round) % transports.size();
        const Cell& cell = plan[c];
        std::fprintf(stderr, "\r[%3zu%%] round %d/%d  %-8s %6s x%-2d %-12s   ",
                     done * 100 / slots, round + 1, flags.common.rounds,
                     cell.shape.c_str(), SizeName(cell.size).c_str(),
                     cell.concurrency, transports[t].name.c_str());
        if (!RunSlot(transports[t], cell, flags.duration, flags.call_deadline,
                     &results[c][t])) {
          return 1;
        }
        ++done;
      }
    }
  }
  std::fprintf(
      stderr, "\rdone in %s.%40s\n",
      absl::FormatDuration(absl::Trunc(absl::Now() - started, absl::Seconds(1)))
          .c_str(),
      "");

  std::vector<AbRow> rows;
  for (size_t c = 0; c < plan.size(); ++c) {
    double uds_p50 = 0;
    for (size_t t = 0; t < transports.size(); ++t) {
      if (transports[t].name == "uds") {
        uds_p50 = Percentile(results[c][t].latencies_us, 0.5);
      }
    }
    for (size_t t = 0; t < transports.size(); ++t) {
      const Accumulated& a = results[c][t];
      AbRow row;
      row.transport = transports[t].name;
      row.shape = plan[c].shape;
      row.size = plan[c].size;
      row.concurrency = plan[c].concurrency;
      row.calls = a.calls;
      row.p50_us = Percentile(a.latencies_us, 0.5);
      row.p90_us = Percentile(a.latencies_us, 0.9);
      row.p99_us = Percentile(a.latencies_us, 0.99);
      row.p999_us = Percentile(a.latencies_us, 0.999);
      row.qps = a.seconds > 0 ? a.calls / a.seconds : 0;
      row.mb_per_s = row.qps * plan[c].size / 1e6;
      row.cpu_us_per_call = a.calls ? a.usage.cpu_seconds * 1e6 / a.calls : 0;
      row.context_switches_per_call =
          a.calls ? double(a.usage.context_switches) / a.calls : 0;
      row.fallbacks = a.fallbacks;
      row.p50_vs_uds = uds_p50 > 0 ? row.p50_us / uds_p50 : 0;
      rows.push_back(row);
    }
  }
  const std::string conditions = Conditions(flags);
  std::printf("ab_bench%s: %s\n", flags.common.quick ? " (--quick)" : "",
              conditions.c_str());
  std::printf(
      "echo_server (%s service) in separate processes; inproc = same "
      "service in this process; both servers register the arena-reply "
      "interceptor. cpu_us and cs/call: both processes. "
      "oneway: latency per message of a client stream.\n\n",
      flags.style.c_str());
  PrintTable(rows);
  PrintSummary(rows);
  bool ok = true;
  if (!flags.common.json_path.empty()) {
    ok &= WriteJson(rows, flags.common.json_path);
  }
  if (!flags.csv_path.empty()) ok &= WriteCsv(rows, flags.csv_path);
  if (!flags.svg_path.empty()) {
    ok &= WriteSvg(rows, conditions, flags.svg_path);
  }
  if (!ok) std::fprintf(stderr, "could not write an output file\n");
  for (auto& [wait, server] : servers) server->Stop();
  if (inproc_server) {
    inproc_server->Shutdown();
    inproc_service.Stop();
  }
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace shmgrpc::bench

int main(int argc, char** argv) { return shmgrpc::bench::Main(argc, argv); }
