// CPU time and context switches of a whole process, for "cost per call"
// columns: this process via getrusage, another one via /proc.
#ifndef SHMGRPC_BENCHMARKS_PROCESS_USAGE_H_
#define SHMGRPC_BENCHMARKS_PROCESS_USAGE_H_

#include <sys/types.h>

#include <cstdint>
#include <map>

namespace shmgrpc::bench {

struct ProcessUsage {
  double cpu_seconds = 0;         // user + system
  uint64_t context_switches = 0;  // voluntary + involuntary
};

// This process, all threads (exited ones included).
ProcessUsage SelfUsage();

// Another process, sampled twice: CPU from /proc/PID/stat (all threads,
// exited ones included; clock-tick resolution), context switches summed over
// its threads' /proc/PID/task/TID/status, counting per thread only what it
// did since the first sample (threads that exit in between are lost, so
// switches are a lower bound for servers with changing thread pools).
class OtherProcessUsage {
 public:
  explicit OtherProcessUsage(pid_t pid);  // first sample
  ProcessUsage Since() const;             // second sample, minus the first

 private:
  struct Sample {
    double cpu_seconds = 0;
    std::map<int, uint64_t> switches_by_thread;
  };
  static Sample Take(pid_t pid);

  const pid_t pid_;
  const Sample start_;
};

inline ProcessUsage operator-(const ProcessUsage& a, const ProcessUsage& b) {
  return {a.cpu_seconds - b.cpu_seconds,
          a.context_switches - b.context_switches};
}

}  // namespace shmgrpc::bench

#endif  // SHMGRPC_BENCHMARKS_PROCESS_USAGE_H_
