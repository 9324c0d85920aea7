// Result rows of the A/B benchmark and the ways they are written out: a
// terminal table, JSON, CSV, and an SVG chart drawn here (no plotting
// library): unary p50 latency vs message size per transport on log-log
// axes, and the shm/UDS ratio vs size.
#ifndef SHMGRPC_BENCHMARKS_AB_REPORT_H_
#define SHMGRPC_BENCHMARKS_AB_REPORT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace shmgrpc::bench {

struct AbRow {
  std::string transport;  // shm-notify, shm-poll, shm-periodic, uds, tcp, inproc
  std::string shape;      // unary, pingpong, oneway
  size_t size = 0;
  int concurrency = 1;
  uint64_t calls = 0;  // messages for oneway
  double p50_us = 0, p90_us = 0, p99_us = 0, p999_us = 0;
  double qps = 0;
  double mb_per_s = 0;  // payload bytes per second, one direction
  double cpu_us_per_call = 0;  // both processes, user + system
  double context_switches_per_call = 0;  // both processes
  uint64_t fallbacks = 0;  // shm: calls sent plain + messages sent inline
  double p50_vs_uds = 0;   // this row's p50 / the uds row's p50 (same cell)
};

void PrintTable(const std::vector<AbRow>& rows);
bool WriteJson(const std::vector<AbRow>& rows, const std::string& path);
bool WriteCsv(const std::vector<AbRow>& rows, const std::string& path);
// `subtitle` states the conditions (machine, allocator, wait strategies).
bool WriteSvg(const std::vector<AbRow>& rows, const std::string& subtitle,
              const std::string& path);

}  // namespace shmgrpc::bench

#endif  // SHMGRPC_BENCHMARKS_AB_REPORT_H_
