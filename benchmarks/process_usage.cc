#include "benchmarks/process_usage.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace shmgrpc::bench {

ProcessUsage SelfUsage() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  ProcessUsage result;
  result.cpu_seconds = usage.ru_utime.tv_sec + usage.ru_stime.tv_sec +
                       (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
  result.context_switches = usage.ru_nvcsw + usage.ru_nivcsw;
  return result;
}

OtherProcessUsage::OtherProcessUsage(pid_t pid)
    : pid_(pid), start_(Take(pid)) {}

ProcessUsage OtherProcessUsage::Since() const {
  const Sample now = Take(pid_);
  ProcessUsage used;
  used.cpu_seconds = now.cpu_seconds - start_.cpu_seconds;
  for (const auto& [tid, switches] : now.switches_by_thread) {
    auto it = start_.switches_by_thread.find(tid);
    const uint64_t before = it == start_.switches_by_thread.end() ? 0 : it->second;
    used.context_switches += switches - std::min(switches, before);
  }
  return used;
}

OtherProcessUsage::Sample OtherProcessUsage::Take(pid_t pid) {
  Sample sample;
  const std::string proc = "/proc/" + std::to_string(pid);
  if (FILE* f = std::fopen((proc + "/stat").c_str(), "r")) {
    // Fields 14 and 15 (utime, stime), after "pid (comm) state": skip past
    // the last ')' since comm may contain spaces.
    char buf[1024];
    const size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    std::fclose(f);
    if (const char* rest = std::strrchr(buf, ')')) {
      unsigned long long utime = 0, stime = 0;
      if (std::sscanf(rest + 2,
                      "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                      &utime, &stime) == 2) {
        sample.cpu_seconds =
            double(utime + stime) / double(sysconf(_SC_CLK_TCK));
      }
    }
  }
  DIR* dir = opendir((proc + "/task").c_str());
  if (dir == nullptr) return sample;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    const std::string status = proc + "/task/" + entry->d_name + "/status";
    FILE* f = std::fopen(status.c_str(), "r");
    if (f == nullptr) continue;
    uint64_t switches = 0;
    char line[256];
    while (std::fgets(line, sizeof(line), f) != nullptr) {
      unsigned long long n;
      if (std::sscanf(line, "voluntary_ctxt_switches: %llu", &n) == 1 ||
          std::sscanf(line, "nonvoluntary_ctxt_switches: %llu", &n) == 1) {
        switches += n;
      }
    }
    std::fclose(f);
    sample.switches_by_thread[std::atoi(entry->d_name)] = switches;
  }
  closedir(dir);
  return sample;
}

}  // namespace shmgrpc::bench
