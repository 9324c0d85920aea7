#include "benchmarks/bench_flags.h"

#include <unistd.h>  // environ

#include <algorithm>
#include <cstdio>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace shmgrpc::bench {
namespace {

void Usage(const char* argv0, const std::vector<size_t>& default_sizes,
           size_t min_size, size_t max_size, const ExtraFlags* extra) {
  std::fprintf(
      stderr,
      "usage: %s [--quick] [--rounds=N] [--sizes=A,B,...] "
      "[--json=FILE] %s\n"
      "  --quick      short run\n"
      "  --rounds=N   interleaved rounds (default 10; 3 with --quick)\n"
      "  --sizes=...  message sizes in bytes, each in [%zu, %zu] "
      "(default %s)\n"
      "  --json=FILE  also write the result rows as JSON\n%s",
      argv0, extra ? extra->usage_synopsis.c_str() : "", min_size, max_size,
      absl::StrJoin(default_sizes, ",").c_str(),
      extra ? extra->usage_lines.c_str() : "");
}

}  // namespace

bool ParseBenchFlags(int argc, char** argv, size_t min_size, size_t max_size,
                     BenchFlags* flags, const ExtraFlags* extra) {
  const std::vector<size_t> defaults = flags->sizes;
  bool rounds_set = false;
  bool sizes_set = false;
  auto fail = [&](const std::string& why) {
    if (!why.empty()) std::fprintf(stderr, "%s\n", why.c_str());
    Usage(argv[0], defaults, min_size, max_size, extra);
    return false;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    std::string extra_error;
    if (extra != nullptr && extra->parse(arg, &extra_error)) {
      if (!extra_error.empty()) return fail(extra_error);
    } else if (arg == "--quick") {
      flags->quick = true;
    } else if (absl::StartsWith(arg, "--rounds=")) {
      if (!absl::SimpleAtoi(arg.substr(9), &flags->rounds) ||
          flags->rounds < 1) {
        return fail("bad --rounds: " + arg);
      }
      rounds_set = true;
    } else if (absl::StartsWith(arg, "--sizes=")) {
      if (!sizes_set) flags->sizes.clear();
      sizes_set = true;
      for (absl::string_view part : absl::StrSplit(arg.substr(8), ',')) {
        size_t size;
        if (!absl::SimpleAtoi(part, &size) || size < min_size ||
            size > max_size) {
          return fail("bad --sizes entry: '" + std::string(part) + "'");
        }
        flags->sizes.push_back(size);
      }
    } else if (absl::StartsWith(arg, "--json=") && arg.size() > 7) {
      flags->json_path = arg.substr(7);
    } else if (arg == "--help" || arg == "-h") {
      return fail("");
    } else {
      return fail("unknown flag: " + arg);
    }
  }
  if (flags->quick && !rounds_set) flags->rounds = 3;
  return true;
}

double Percentile(std::vector<double> samples, double p) {
  if (samples.empty()) return 0;
  std::sort(samples.begin(), samples.end());
  const size_t index = std::min(
      samples.size() - 1, static_cast<size_t>(p * (samples.size() - 1) + 0.5));
  return samples[index];
}

std::string SizeName(size_t size) {
  if (size != 0 && size % (1 << 20) == 0) {
    return absl::StrFormat("%dMiB", size >> 20);
  }
  if (size != 0 && size % 1024 == 0) {
    return absl::StrFormat("%dKiB", size >> 10);
  }
  return absl::StrFormat("%dB", size);
}

std::string CpuConditions() {
  std::string result =
      absl::StrFormat("%ld CPUs", sysconf(_SC_NPROCESSORS_ONLN));
  std::string driver;
  std::ifstream("/sys/devices/system/cpu/cpuidle/current_driver") >> driver;
  if (driver.empty()) return result;
  absl::StrAppend(&result, " (cpuidle ", driver);
  std::string halt_poll_ns;
  std::ifstream("/sys/module/haltpoll/parameters/guest_halt_poll_ns") >>
      halt_poll_ns;
  if (!halt_poll_ns.empty()) {
    absl::StrAppend(&result, ", guest_halt_poll_ns ", halt_poll_ns);
  }
  return result + ")";
}

std::string AllocatorConditions() {
  std::vector<std::string> settings;
  for (char** var = environ; *var != nullptr; ++var) {
    if (absl::StartsWith(*var, "MALLOC_") ||
        absl::StartsWith(*var, "GLIBC_TUNABLES=")) {
      settings.push_back(*var);
    }
  }
  if (settings.empty()) return "glibc malloc defaults";
  std::sort(settings.begin(), settings.end());
  return "allocator env " + absl::StrJoin(settings, ",");
}

}  // namespace shmgrpc::bench
