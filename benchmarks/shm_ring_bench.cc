// shm_ring_bench: the shm layer against a plain unix socket, two processes.
//
// Measures, in one run with interleaved rounds (so machine noise hits every
// transport alike):
//  - round-trip latency (p50, p99) at 64 B .. 4 MiB, shm in each wait
//    strategy vs UDS. Both sides do the same work: the sender writes the
//    payload once (memcpy into a shm block / write() from a buffer), the
//    receiver checksums every byte (in place for shm / after read() for UDS),
//    and the echo side copies the request into its reply the same way;
//  - pipelined one-way messages/s at 64 B and 4 KiB (shm notify mode with
//    doorbell suppression vs one write() per message, the reader reading in
//    bulk), with doorbells per message;
//  - small-block allocate+free in ns.
// Prints a table with its conditions; --json=FILE writes the rows.
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/str_format.h"
#include "benchmarks/bench_flags.h"
#include "shm/block_allocator.h"
#include "shm/endpoint.h"
#include "tests/peer_process.h"

namespace shmgrpc::bench {
namespace {

using shm::Descriptor;
using shm::Endpoint;
using shm::WaitStrategy;
using testing::Checksum;
using Clock = std::chrono::steady_clock;

constexpr WaitStrategy kStrategies[] = {
    WaitStrategy::kNotify, WaitStrategy::kPoll, WaitStrategy::kPeriodic};
constexpr int kNumStrategies = 3;
constexpr int kUds = kNumStrategies;  // transport index for plain UDS

enum class CommandKind : uint32_t { kPingPong = 1, kStream = 2 };

struct Command {
  CommandKind kind;
  uint32_t transport;  // 0..2 shm strategy, 3 UDS
  uint64_t size;
  uint64_t iterations;
};

volatile uint64_t checksum_sink = 0;

double Micros(Clock::duration d) {
  return std::chrono::duration<double, std::micro>(d).count();
}

bool ReadFully(int fd, void* data, size_t len) {
  size_t done = 0;
  while (done < len) {
    const ssize_t n = read(fd, static_cast<char*>(data) + done, len - done);
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

bool WriteFully(int fd, const void* data, size_t len) {
  size_t done = 0;
  while (done < len) {
    const ssize_t n =
        write(fd, static_cast<const char*>(data) + done, len - done);
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

const absl::Time kNoDeadline = absl::InfiniteFuture();

// Sends `size` bytes copied from `source` (the "serialize" step).
bool ShmSendCopy(Endpoint& endpoint, const uint8_t* source, size_t size) {
  absl::StatusOr<shm::Block> block;
  while (!(block = endpoint.Allocate(size, 1)).ok()) {
    if (block.status().code() != absl::StatusCode::kResourceExhausted) {
      return false;
    }
  }
  std::memcpy(block->data, source, size);
  return endpoint.Send({block->offset, static_cast<uint32_t>(size), 1, 0, 0, 0},
                       kNoDeadline)
      .ok();
}

// ---- the echo process -----------------------------------------------------

int ServeCommands(int control, int uds, Endpoint* endpoints[]) {
  std::vector<uint8_t> buffer(8 << 20);
  Command command;
  while (ReadFully(control, &command, sizeof(command))) {
    const size_t size = command.size;
    if (command.transport == kUds) {
      if (command.kind == CommandKind::kPingPong) {
        for (uint64_t i = 0; i < command.iterations; ++i) {
          if (!ReadFully(uds, buffer.data(), size)) return 2;
          checksum_sink += Checksum(buffer.data(), size);
          if (!WriteFully(uds, buffer.data(), size)) return 3;
        }
      } else {
        // Bulk reads; every message's bytes are checksummed.
        uint64_t remaining = command.iterations * size;
        while (remaining > 0) {
          const size_t want = std::min<uint64_t>(remaining, 256 * 1024);
          const ssize_t n = read(uds, buffer.data(), want);
          if (n <= 0) return 4;
          checksum_sink += Checksum(buffer.data(), static_cast<size_t>(n));
          remaining -= static_cast<uint64_t>(n);
        }
        const char ack = 1;
        if (!WriteFully(uds, &ack, 1)) return 5;
      }
      continue;
    }
    Endpoint& endpoint = *endpoints[command.transport];
    for (uint64_t i = 0; i < command.iterations; ++i) {
      auto message = endpoint.Receive(kNoDeadline);
      if (!message.ok()) return 6;
      checksum_sink += Checksum(message->data, message->descriptor.length);
      if (command.kind == CommandKind::kPingPong) {
        if (!ShmSendCopy(endpoint, message->data, size)) return 7;
      }
      endpoint.Release(*message);
    }
    if (command.kind == CommandKind::kStream) {
      if (!endpoint.Send({shm::kNoPayload, 0, 2, 0, 0, 0}, kNoDeadline).ok()) {
        return 8;
      }
    }
  }
  return 0;
}

// ---- the measuring process -------------------------------------------------

struct Harness {
  int control;
  int uds;
  Endpoint* endpoints[kNumStrategies];
  std::vector<uint8_t> source;
  std::vector<uint8_t> buffer;
};

void SendCommand(Harness& h, CommandKind kind, int transport, size_t size,
                 uint64_t iterations) {
  const Command command{kind, static_cast<uint32_t>(transport), size,
                        iterations};
  if (!WriteFully(h.control, &command, sizeof(command))) {
    std::fprintf(stderr, "echo process is gone\n");
    std::exit(1);
  }
}

void Die(const char* what) {
  std::fprintf(stderr, "benchmark failed: %s\n", what);
  std::exit(1);
}

// Runs `iterations` round trips and appends their latencies (us).
void PingPong(Harness& h, int transport, size_t size, uint64_t iterations,
              std::vector<double>* samples) {
  SendCommand(h, CommandKind::kPingPong, transport, size, iterations + 1);
  for (uint64_t i = 0; i <= iterations; ++i) {  // iteration 0 warms up
    const Clock::time_point start = Clock::now();
    if (transport == kUds) {
      if (!WriteFully(h.uds, h.source.data(), size)) Die("uds write");
      if (!ReadFully(h.uds, h.buffer.data(), size)) Die("uds read");
      checksum_sink += Checksum(h.buffer.data(), size);
    } else {
      Endpoint& endpoint = *h.endpoints[transport];
      if (!ShmSendCopy(endpoint, h.source.data(), size)) Die("shm send");
      auto reply = endpoint.Receive(kNoDeadline);
      if (!reply.ok()) Die("shm receive");
      checksum_sink += Checksum(reply->data, reply->descriptor.length);
      endpoint.Release(*reply);
    }
    if (i > 0) samples->push_back(Micros(Clock::now() - start));
  }
}

// One-way pipelined messages/s.
double Stream(Harness& h, int transport, size_t size, uint64_t messages) {
  SendCommand(h, CommandKind::kStream, transport, size, messages);
  const Clock::time_point start = Clock::now();
  if (transport == kUds) {
    for (uint64_t i = 0; i < messages; ++i) {
      if (!WriteFully(h.uds, h.source.data(), size)) Die("uds write");
    }
    char ack;
    if (!ReadFully(h.uds, &ack, 1)) Die("uds ack");
  } else {
    Endpoint& endpoint = *h.endpoints[transport];
    for (uint64_t i = 0; i < messages; ++i) {
      if (!ShmSendCopy(endpoint, h.source.data(), size)) Die("shm send");
    }
    auto ack = endpoint.Receive(kNoDeadline);
    if (!ack.ok()) Die("shm ack");
    endpoint.Release(*ack);
  }
  return messages / std::chrono::duration<double>(Clock::now() - start).count();
}

// The machine's floor for anything crossing cores: two threads bouncing one
// cache line (median round trip, ns). Printed with the conditions because on a
// shared VM it moves with the host's vCPU placement, and every shm number
// above 64 B scales with it.
double CoreToCoreRoundTripNanos() {
  alignas(64) std::atomic<uint64_t> ball{0};
  constexpr uint64_t kTrips = 200000;
  std::thread partner([&ball] {
    for (uint64_t i = 1; i <= kTrips; ++i) {
      while (ball.load(std::memory_order_acquire) != 2 * i - 1) {
      }
      ball.store(2 * i, std::memory_order_release);
    }
  });
  const Clock::time_point start = Clock::now();
  for (uint64_t i = 1; i <= kTrips; ++i) {
    ball.store(2 * i - 1, std::memory_order_release);
    while (ball.load(std::memory_order_acquire) != 2 * i) {
    }
  }
  const double ns =
      std::chrono::duration<double, std::nano>(Clock::now() - start).count() /
      kTrips;
  partner.join();
  return ns;
}

double AllocFreeNanos(uint64_t pairs) {
  auto arena = shm::Arena::Create("alloc_bench", 16 << 20);
  if (!arena.ok()) Die("arena");
  shm::BlockAllocator allocator((*arena)->mutable_base(), (*arena)->size());
  const Clock::time_point start = Clock::now();
  for (uint64_t i = 0; i < pairs; ++i) {
    auto block = allocator.Allocate(64, i);
    if (!block.ok() || !allocator.Free(block->offset).ok()) Die("alloc");
  }
  return std::chrono::duration<double, std::nano>(Clock::now() - start)
             .count() /
         pairs;
}

struct LatencyRow {
  std::string mode;
  size_t size;
  double p50, p99, uds_p50, uds_p99;
  double sleeps_per_round_trip;  // measuring side only
};
struct ThroughputRow {
  std::string mode;
  size_t size;
  double msgs_per_s, uds_msgs_per_s, doorbells_per_msg;
};

int Main(int argc, char** argv) {
  BenchFlags flags;
  flags.sizes = {64, 4096, 64 << 10, 1 << 20, 4 << 20};
  if (!ParseBenchFlags(argc, argv, 1, 4 << 20, &flags)) return 2;
  testing::EndpointConfig configs[kNumStrategies];
  for (int s = 0; s < kNumStrategies; ++s) {
    configs[s].data_bytes = 64ull << 20;
    configs[s].ring_slots = 4096;
    configs[s].wait.strategy = kStrategies[s];
  }
  int control_pair[2], uds_pair[2], shm_pairs[kNumStrategies][2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, control_pair) != 0 ||
      socketpair(AF_UNIX, SOCK_STREAM, 0, uds_pair) != 0) {
    Die("socketpair");
  }
  for (auto& pair : shm_pairs) {
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) Die("socketpair");
  }
  const pid_t child = fork();
  if (child < 0) Die("fork");
  const int side = child == 0 ? 1 : 0;
  for (auto* pair : {control_pair, uds_pair}) close(pair[1 - side]);
  for (auto& pair : shm_pairs) close(pair[1 - side]);
  std::unique_ptr<Endpoint> owned[kNumStrategies];
  Endpoint* endpoints[kNumStrategies];
  for (int s = 0; s < kNumStrategies; ++s) {
    auto endpoint = testing::ConnectEndpoint(
        shm_pairs[s][side], configs[s], side == 0 ? "bench" : "echo");
    if (!endpoint.ok()) Die(endpoint.status().ToString().c_str());
    owned[s] = std::move(*endpoint);
    endpoints[s] = owned[s].get();
  }
  if (child == 0) {
    _exit(ServeCommands(control_pair[1], uds_pair[1], endpoints));
  }

  Harness h{control_pair[0], uds_pair[0], {}, {}, {}};
  std::copy(std::begin(endpoints), std::end(endpoints), h.endpoints);
  h.source.resize(4 << 20);
  testing::FillPayload(h.source.data(), h.source.size(), 42);
  h.buffer.assign(4 << 20, 0);

  struct SizePlan {
    size_t size;
    uint64_t iterations;  // per transport per round
  };
  // Fewer iterations for bigger messages keeps every size near equal time.
  std::vector<SizePlan> plan;
  for (size_t size : flags.sizes) {
    const uint64_t full = size <= 4096       ? 2000
                          : size <= 65536    ? 500
                          : size <= (1 << 20) ? 60
                                              : 20;
    plan.push_back({size, flags.quick ? std::max<uint64_t>(6, full / 4) : full});
  }
  // samples[size index][transport]
  std::vector<std::vector<std::vector<double>>> samples(
      plan.size(), std::vector<std::vector<double>>(kNumStrategies + 1));
  // Times the measuring side slept waiting for a reply, per size and mode.
  std::vector<std::vector<uint64_t>> sleeps(
      plan.size(), std::vector<uint64_t>(kNumStrategies, 0));
  for (int round = 0; round < flags.rounds; ++round) {
    std::fprintf(stderr, "\rround %d/%d: latency...", round + 1, flags.rounds);
    for (size_t p = 0; p < plan.size(); ++p) {
      // Rotate the starting transport so none always runs first.
      for (int k = 0; k <= kNumStrategies; ++k) {
        const int transport = (k + round) % (kNumStrategies + 1);
        const uint64_t slept_before =
            transport == kUds ? 0 : endpoints[transport]->Stats().wakeups;
        PingPong(h, transport, plan[p].size, plan[p].iterations,
                 &samples[p][transport]);
        if (transport != kUds) {
          sleeps[p][transport] +=
              endpoints[transport]->Stats().wakeups - slept_before;
        }
      }
    }
  }
  std::fprintf(stderr, "\rthroughput...                  ");
  std::vector<ThroughputRow> throughput;
  for (size_t size : {size_t{64}, size_t{4096}}) {
    const uint64_t messages = flags.quick ? 100000 : 400000;
    std::vector<double> shm_rates, uds_rates;
    uint64_t doorbells = 0, sent = 0;
    for (int round = 0; round < std::max(1, flags.rounds / 2); ++round) {
      const shm::EndpointStats before = endpoints[0]->Stats();
      shm_rates.push_back(Stream(h, 0, size, messages));
      const shm::EndpointStats after = endpoints[0]->Stats();
      doorbells += after.doorbells_sent - before.doorbells_sent;
      sent += after.messages_sent - before.messages_sent;
      uds_rates.push_back(Stream(h, kUds, size, messages));
    }
    throughput.push_back({"notify", size, Percentile(shm_rates, 0.5),
                          Percentile(uds_rates, 0.5),
                          static_cast<double>(doorbells) / sent});
  }
  std::fprintf(stderr, "\ralloc+free...                  ");
  const double alloc_free_ns = AllocFreeNanos(flags.quick ? 2000000 : 10000000);
  const double core_to_core_ns = CoreToCoreRoundTripNanos();
  std::fprintf(stderr, "\rdone.                          \n");
  close(h.control);
  int status = testing::WaitPeer(child);
  if (status != 0) std::fprintf(stderr, "echo process exited with %d\n", status);

  std::vector<LatencyRow> latency;
  for (size_t p = 0; p < plan.size(); ++p) {
    const std::vector<double>& uds = samples[p][kUds];
    for (int s = 0; s < kNumStrategies; ++s) {
      latency.push_back({std::string(shm::WaitStrategyName(kStrategies[s])),
                         plan[p].size, Percentile(samples[p][s], 0.5),
                         Percentile(samples[p][s], 0.99),
                         Percentile(uds, 0.5), Percentile(uds, 0.99),
                         static_cast<double>(sleeps[p][s]) /
                             (plan[p].iterations + 1) / flags.rounds});
    }
  }
  const shm::WaitOptions wait;
  std::printf(
      "shm_ring_bench: two processes, %d interleaved rounds%s\n"
      "conditions: %ld CPUs, arena 64 MiB/side, ring 4096 slots, notify spin "
      "%s..%s adaptive (+%s per MiB after a large message), periodic %s, "
      "glibc malloc defaults, sender copies the payload in (memcpy / write), "
      "receiver checksums every byte (in place / after read), echo copies "
      "request to reply\n"
      "machine floor: core-to-core cache-line round trip %.0f ns\n\n",
      flags.rounds, flags.quick ? " (--quick)" : "", sysconf(_SC_NPROCESSORS_ONLN),
      absl::FormatDuration(wait.min_spin).c_str(),
      absl::FormatDuration(wait.max_spin).c_str(),
      absl::FormatDuration(wait.spin_per_mib).c_str(),
      absl::FormatDuration(wait.period).c_str(), core_to_core_ns);
  std::printf("%-8s %-9s %10s %10s %11s %11s %8s %8s\n", "size", "mode",
              "p50_us", "p99_us", "uds_p50_us", "uds_p99_us", "ratio",
              "sleeps/rt");
  for (const LatencyRow& r : latency) {
    std::printf("%-8s %-9s %10.2f %10.2f %11.2f %11.2f %8.3f %8.2f\n",
                SizeName(r.size).c_str(), r.mode.c_str(), r.p50, r.p99,
                r.uds_p50, r.uds_p99, r.p50 / r.uds_p50,
                r.sleeps_per_round_trip);
  }
  std::printf("\npipelined one-way (median of rounds)\n");
  std::printf("%-8s %-9s %14s %14s %8s %16s\n", "size", "mode", "msgs_per_s",
              "uds_msgs_per_s", "ratio", "doorbells_per_msg");
  for (const ThroughputRow& r : throughput) {
    std::printf("%-8s %-9s %14.0f %14.0f %8.2f %16.5f\n",
                SizeName(r.size).c_str(), r.mode.c_str(), r.msgs_per_s,
                r.uds_msgs_per_s, r.msgs_per_s / r.uds_msgs_per_s,
                r.doorbells_per_msg);
  }
  std::printf("\nsmall-block (64 B) allocate+free: %.1f ns\n", alloc_free_ns);

  if (!flags.json_path.empty()) {
    FILE* out = std::fopen(flags.json_path.c_str(), "w");
    if (out == nullptr) {
      std::fprintf(stderr, "cannot write %s\n", flags.json_path.c_str());
      return 1;
    }
    std::fprintf(out, "[\n");
    for (const LatencyRow& r : latency) {
      std::fprintf(out,
                   "  {\"mode\": \"%s\", \"size\": %zu, \"p50_us\": %.3f, "
                   "\"p99_us\": %.3f, \"uds_p50_us\": %.3f, \"ratio\": %.4f},\n",
                   r.mode.c_str(), r.size, r.p50, r.p99, r.uds_p50,
                   r.p50 / r.uds_p50);
    }
    for (const ThroughputRow& r : throughput) {
      std::fprintf(out,
                   "  {\"mode\": \"%s\", \"kind\": \"throughput\", \"size\": "
                   "%zu, \"msgs_per_s\": %.0f, \"uds_msgs_per_s\": %.0f, "
                   "\"ratio\": %.3f, \"doorbells_per_msg\": %.5f},\n",
                   r.mode.c_str(), r.size, r.msgs_per_s, r.uds_msgs_per_s,
                   r.msgs_per_s / r.uds_msgs_per_s, r.doorbells_per_msg);
    }
    std::fprintf(out,
                 "  {\"kind\": \"alloc_free\", \"size\": 64, \"ns\": %.2f},\n"
                 "  {\"kind\": \"core_to_core_round_trip\", \"ns\": %.1f}\n]\n",
                 alloc_free_ns, core_to_core_ns);
    std::fclose(out);
  }
  return status == 0 ? 0 : 1;
}

}  // namespace
}  // namespace shmgrpc::bench

int main(int argc, char** argv) { return shmgrpc::bench::Main(argc, argv); }
