// FindMemoryHeadroom over made-up /proc and /sys trees (cgroup v1, v2, a
// namespaced mount, nothing readable), and over this machine's real ones.
#include "shm/memory_headroom.h"

#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace shmgrpc::shm {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr char kNoLimitV1[] = "9223372036854771712";

// A fresh directory standing for "/".
class FakeRoot {
 public:
  FakeRoot() {
    const char* tmp = std::getenv("TEST_TMPDIR");
    path_ =
        absl::StrCat(tmp ? tmp : "/tmp", "/root", counter_++, "-", getpid());
    Mkdirs(path_);
  }
  // Writes `text` at `relative` (creating its directories).
  void Write(const std::string& relative, const std::string& text) {
    const std::string full = path_ + relative;
    Mkdirs(full.substr(0, full.rfind('/')));
    std::ofstream(full) << text;
  }
  const std::string& path() const { return path_; }

 private:
  static void Mkdirs(const std::string& dir) {
    for (size_t at = 1; at != std::string::npos; at = dir.find('/', at + 1)) {
      mkdir(dir.substr(0, at).c_str(), 0755);
    }
    mkdir(dir.c_str(), 0755);
  }
  static inline int counter_ = 0;
  std::string path_;
};

std::string Bytes(uint64_t n) { return absl::StrCat(n, "\n"); }

TEST(MemoryHeadroomTest, CgroupV1TakesTheTightestAncestorAndCountsCacheAsFree) {
  FakeRoot root;
  root.Write(
      "/proc/self/mountinfo",
      "25 1 0:22 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup "
      "rw,memory\n"
      "26 1 0:23 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu\n");
  root.Write("/proc/self/cgroup", "8:cpu:/\n4:memory:/svc/app\n");
  root.Write("/proc/meminfo",
             "MemTotal: 8000000 kB\nMemAvailable: 4000000 kB\n");
  const std::string app = "/sys/fs/cgroup/memory/svc/app";
  // app: 1 GiB limit, 600 MiB used of which 100 MiB inactive cache: 524 MiB.
  root.Write(app + "/memory.limit_in_bytes", Bytes(1024 * kMiB));
  root.Write(app + "/memory.usage_in_bytes", Bytes(600 * kMiB));
  root.Write(app + "/memory.stat",
             absl::StrCat("cache 1\ntotal_inactive_file ", 100 * kMiB, "\n"));
  // svc: 800 MiB limit, 700 MiB used, nothing reclaimable: 100 MiB.
  const std::string svc = "/sys/fs/cgroup/memory/svc";
  root.Write(svc + "/memory.limit_in_bytes", Bytes(800 * kMiB));
  root.Write(svc + "/memory.usage_in_bytes", Bytes(700 * kMiB));
  // The hierarchy's root: no limit.
  root.Write("/sys/fs/cgroup/memory/memory.limit_in_bytes", kNoLimitV1);
  root.Write("/sys/fs/cgroup/memory/memory.usage_in_bytes", Bytes(900 * kMiB));

  const MemoryHeadroom headroom = FindMemoryHeadroom(root.path());
  EXPECT_EQ(headroom.bytes, 100 * kMiB);
  EXPECT_EQ(headroom.limited_by, root.path() + svc);

  EXPECT_TRUE(CheckMemoryHeadroom(64 * kMiB, 16 * kMiB, root.path()).ok());
  const absl::Status refused =
      CheckMemoryHeadroom(90 * kMiB, 16 * kMiB, root.path());
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.message().find(svc), std::string::npos)
      << refused.message();
}

TEST(MemoryHeadroomTest, CgroupV2WithANamespacedMountAndMaxMeaningNoLimit) {
  FakeRoot root;
  // Inside a cgroup namespace the mount shows the hierarchy from /ctr down.
  root.Write("/proc/self/mountinfo",
             "30 1 0:26 /ctr /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
  root.Write("/proc/self/cgroup", "0::/ctr/app\n");
  root.Write("/proc/meminfo", "MemAvailable: 4000000 kB\n");
  root.Write("/sys/fs/cgroup/app/memory.max", "max\n");
  root.Write("/sys/fs/cgroup/app/memory.current", Bytes(10 * kMiB));
  root.Write("/sys/fs/cgroup/memory.max", Bytes(300 * kMiB));
  root.Write("/sys/fs/cgroup/memory.current", Bytes(200 * kMiB));
  root.Write("/sys/fs/cgroup/memory.stat",
             absl::StrCat("anon 1\ninactive_file ", 50 * kMiB, "\n"));

  const MemoryHeadroom headroom = FindMemoryHeadroom(root.path());
  EXPECT_EQ(headroom.bytes, 150 * kMiB);
  EXPECT_EQ(headroom.limited_by, root.path() + "/sys/fs/cgroup");
}

TEST(MemoryHeadroomTest, MemAvailableBindsWhenItIsTighter) {
  FakeRoot root;
  root.Write("/proc/self/mountinfo",
             "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
  root.Write("/proc/self/cgroup", "0::/app\n");
  root.Write("/proc/meminfo", "MemAvailable:     65536 kB\n");
  root.Write("/sys/fs/cgroup/app/memory.max", Bytes(1024 * kMiB));
  root.Write("/sys/fs/cgroup/app/memory.current", Bytes(0));

  const MemoryHeadroom headroom = FindMemoryHeadroom(root.path());
  EXPECT_EQ(headroom.bytes, 64 * kMiB);
  EXPECT_EQ(headroom.limited_by, "MemAvailable");
}

TEST(MemoryHeadroomTest, NothingReadableMeansNoLimit) {
  FakeRoot root;
  const MemoryHeadroom headroom = FindMemoryHeadroom(root.path());
  EXPECT_EQ(headroom.bytes, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(headroom.limited_by, "");
  EXPECT_TRUE(CheckMemoryHeadroom(uint64_t{1} << 50, 0, root.path()).ok());
}

TEST(MemoryHeadroomTest, ThisMachineHasSomeAndNoMoreThanItsMemAvailable) {
  const MemoryHeadroom headroom = FindMemoryHeadroom();
  EXPECT_GT(headroom.bytes, 64 * kMiB) << headroom.limited_by;
  EXPECT_FALSE(headroom.limited_by.empty());
  std::printf("headroom here: %llu MiB (%s)\n",
              static_cast<unsigned long long>(headroom.bytes / kMiB),
              headroom.limited_by.c_str());
}

}  // namespace
}  // namespace shmgrpc::shm
