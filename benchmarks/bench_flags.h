// Flags and small statistics shared by the benchmark programs.
//
// Every benchmark takes the same flags:
//   --quick        short run
//   --rounds=N     interleaved rounds (default 10; 3 with --quick)
//   --sizes=A,B    message sizes in bytes (each in [min_size, max_size])
//   --json=FILE    also write the result rows as JSON
// Bad flags print the reason and the usage, and ParseBenchFlags returns false.
#ifndef SHMGRPC_BENCHMARKS_BENCH_FLAGS_H_
#define SHMGRPC_BENCHMARKS_BENCH_FLAGS_H_

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

namespace shmgrpc::bench {

struct BenchFlags {
  bool quick = false;
  int rounds = 10;
  std::string json_path;
  std::vector<size_t> sizes;  // the program's defaults unless --sizes
};

// A program's own flags on top of the common ones: `parse` returns false for
// an argument that is not one of them, and sets `*error` for one that is but
// has a bad value. `usage` lines are appended to the usage text.
struct ExtraFlags {
  std::string usage_synopsis;  // e.g. "[--duration=S]"
  std::string usage_lines;
  std::function<bool(const std::string& arg, std::string* error)> parse;
};

// `flags->sizes` holds the defaults on entry.
bool ParseBenchFlags(int argc, char** argv, size_t min_size, size_t max_size,
                     BenchFlags* flags, const ExtraFlags* extra = nullptr);

// Nearest-rank percentile (p in [0, 1]) of `samples`; 0 when empty.
double Percentile(std::vector<double> samples, double p);

// "64B", "4KiB", "1MiB"; a size that is not a whole number of KiB or MiB
// in bytes ("3000B").
std::string SizeName(size_t size);

// "2 CPUs (cpuidle haltpoll, guest_halt_poll_ns 0)": the CPU count, and
// what an idle CPU does when Linux says. Why it is in every report: on a VM
// whose idle vCPUs halt, waking a thread on another CPU costs a VM exit,
// and wake-ups are most of a small call's latency, so results from
// machines with different idle settings do not compare.
std::string CpuConditions();

// The allocator settings this process runs with (its children inherit them):
// "glibc malloc defaults", or "allocator env K=V,..." listing every MALLOC_*
// and GLIBC_TUNABLES variable set. For the conditions line of a report.
std::string AllocatorConditions();

}  // namespace shmgrpc::bench

#endif  // SHMGRPC_BENCHMARKS_BENCH_FLAGS_H_
