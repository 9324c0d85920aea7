#include "shm/memory_headroom.h"

#include <fstream>
#include <optional>
#include <sstream>
#include <vector>

#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace shmgrpc::shm {
namespace {

// cgroup v1 reports "no limit" as the page counter's maximum (about 2^63);
// anything this large is no limit.
constexpr uint64_t kNoLimitAbove = uint64_t{1} << 62;

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::optional<uint64_t> ReadNumber(const std::string& path) {
  std::optional<std::string> text = ReadFile(path);
  uint64_t value;
  if (!text || !absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &value)) {
    return std::nullopt;  // absent, unreadable, or "max"
  }
  return value;
}

// The value of `key` in a "key value" per line file (memory.stat), else 0.
uint64_t StatValue(const std::string& stat, absl::string_view key) {
  for (absl::string_view line : absl::StrSplit(stat, '\n')) {
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, ' ', absl::SkipEmpty());
    uint64_t value;
    if (fields.size() == 2 && fields[0] == key &&
        absl::SimpleAtoi(fields[1], &value)) {
      return value;
    }
  }
  return 0;
}

// A mounted cgroup hierarchy that accounts memory.
struct CgroupMount {
  std::string root;   // the hierarchy's directory shown at the mount point
  std::string point;  // where it is mounted
  bool v2 = false;
};

std::vector<CgroupMount> MemoryCgroupMounts(const std::string& mountinfo) {
  std::vector<CgroupMount> mounts;
  for (absl::string_view line : absl::StrSplit(mountinfo, '\n')) {
    // "id parent maj:min root point options [optional...] - type source super"
    std::vector<std::string> before_after = absl::StrSplit(line, " - ");
    if (before_after.size() != 2) continue;
    std::vector<std::string> fields =
        absl::StrSplit(before_after[0], ' ', absl::SkipEmpty());
    std::vector<std::string> tail =
        absl::StrSplit(before_after[1], ' ', absl::SkipEmpty());
    if (fields.size() < 5 || tail.size() < 3) continue;
    const bool v2 = tail[0] == "cgroup2";
    const bool v1_memory =
        tail[0] == "cgroup" &&
        absl::c_linear_search(
            std::vector<std::string>(absl::StrSplit(tail[2], ',')), "memory");
    if (v2 || v1_memory) mounts.push_back({fields[3], fields[4], v2});
  }
  return mounts;
}

// The process's path in the v1 memory hierarchy or the v2 hierarchy.
std::optional<std::string> CgroupPath(const std::string& proc_cgroup, bool v2) {
  for (absl::string_view line : absl::StrSplit(proc_cgroup, '\n')) {
    std::vector<std::string> fields =
        absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (fields.size() != 3) continue;
    if (v2 && fields[0] == "0" && fields[1].empty()) return fields[2];
    if (!v2 && absl::c_linear_search(
                   std::vector<std::string>(absl::StrSplit(fields[1], ',')),
                   "memory")) {
      return fields[2];
    }
  }
  return std::nullopt;
}

// Headroom of one cgroup directory, if it has a limit.
std::optional<uint64_t> CgroupHeadroom(const std::string& dir, bool v2) {
  const std::optional<uint64_t> limit =
      ReadNumber(dir + (v2 ? "/memory.max" : "/memory.limit_in_bytes"));
  if (!limit || *limit >= kNoLimitAbove) return std::nullopt;
  const std::optional<uint64_t> usage =
      ReadNumber(dir + (v2 ? "/memory.current" : "/memory.usage_in_bytes"));
  if (!usage) return std::nullopt;
  const std::string stat = ReadFile(dir + "/memory.stat").value_or("");
  // v1's total_ counters include the descendants, as usage does.
  const uint64_t inactive_file =
      StatValue(stat, v2 ? "inactive_file" : "total_inactive_file");
  const uint64_t working_set =
      *usage > inactive_file ? *usage - inactive_file : 0;
  return *limit > working_set ? *limit - working_set : 0;
}

void TakeLeast(uint64_t bytes, const std::string& by, MemoryHeadroom* least) {
  if (bytes < least->bytes) {
    least->bytes = bytes;
    least->limited_by = by;
  }
}

}  // namespace

MemoryHeadroom FindMemoryHeadroom(const std::string& root) {
  MemoryHeadroom least;
  const std::string proc_cgroup =
      ReadFile(root + "/proc/self/cgroup").value_or("");
  const std::string mountinfo =
      ReadFile(root + "/proc/self/mountinfo").value_or("");
  for (const CgroupMount& mount : MemoryCgroupMounts(mountinfo)) {
    std::optional<std::string> path = CgroupPath(proc_cgroup, mount.v2);
    if (!path) continue;
    // The part of the process's path below what this mount shows.
    std::string relative;
    if (mount.root == "/") {
      relative = *path;
    } else if (absl::StartsWith(*path, mount.root)) {
      relative = path->substr(mount.root.size());
    }
    if (relative == "/") relative.clear();
    // This cgroup, then each ancestor up to the mount point.
    const std::string top = root + mount.point;
    std::string dir = top + relative;
    for (;;) {
      if (std::optional<uint64_t> headroom = CgroupHeadroom(dir, mount.v2)) {
        TakeLeast(*headroom, dir, &least);
      }
      if (dir.size() <= top.size()) break;
      dir.resize(dir.rfind('/'));
    }
  }
  const std::string meminfo = ReadFile(root + "/proc/meminfo").value_or("");
  for (absl::string_view line : absl::StrSplit(meminfo, '\n')) {
    // "MemAvailable:   12345 kB"
    if (!absl::ConsumePrefix(&line, "MemAvailable:")) continue;
    uint64_t kib;
    if (absl::SimpleAtoi(
            absl::StripSuffix(absl::StripAsciiWhitespace(line), " kB"), &kib)) {
      TakeLeast(kib * 1024, "MemAvailable", &least);
    }
  }
  return least;
}

absl::Status CheckMemoryHeadroom(uint64_t bytes, uint64_t reserve,
                                 const std::string& root) {
  const MemoryHeadroom headroom = FindMemoryHeadroom(root);
  if (bytes <= headroom.bytes && headroom.bytes - bytes >= reserve) {
    return absl::OkStatus();
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      "committing ", bytes, " bytes of shared memory would leave less than ",
      reserve, " of the ", headroom.bytes,
      " bytes this process may still use (", headroom.limited_by, ")"));
}

}  // namespace shmgrpc::shm
