// shm_dump: lists the shmgrpc arenas a live process has open and every block
// in them that is still in use, for hunting shared-memory leaks.
//
//   shm_dump --pid=PID [--all]
//
// Each arena is a memfd; the tool opens it read-only through /proc/PID/fd
// (same uid or CAP_SYS_PTRACE needed), checks the segment header and walks
// the block headers (see shm/segment_dump.h). A process holds its own arena
// per session and a read-only mapping of its peer's, so one dump shows both
// directions. Blocks are listed oldest first (20 per arena unless --all):
// offset, payload capacity and requested bytes, the stream that allocated
// it, and its age. Exit code: 0 when every arena could be read.
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "shm/segment_dump.h"

namespace {

constexpr char kUsage[] = "usage: %s --pid=PID [--all]\n";

uint64_t CoarseNowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return uint64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// Returns false when the memfd could not be read as a segment.
bool DumpFd(int pid, const std::string& fd_name, const std::string& link,
            bool all) {
  const std::string path = "/proc/" + std::to_string(pid) + "/fd/" + fd_name;
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    std::printf("fd %s %s: cannot open: %m\n", fd_name.c_str(), link.c_str());
    return false;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size <= 0) {
    close(fd);
    return false;
  }
  const size_t size = static_cast<size_t>(st.st_size);
  void* map = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  if (map == MAP_FAILED) {
    std::printf("fd %s %s: cannot map: %m\n", fd_name.c_str(), link.c_str());
    return false;
  }
  absl::StatusOr<shmgrpc::shm::SegmentDump> dump = shmgrpc::shm::DumpSegment(
      static_cast<const uint8_t*>(map), size, CoarseNowMs());
  munmap(map, size);
  if (!dump.ok()) {
    std::printf("fd %s %s: %s\n", fd_name.c_str(), link.c_str(),
                std::string(dump.status().message()).c_str());
    return false;
  }
  const bool own = dump->header.owner_pid == pid;
  std::printf(
      "fd %s %s: %s arena (owner pid %d), data %llu bytes, live blocks: %zu "
      "(%llu bytes)\n",
      fd_name.c_str(), link.c_str(), own ? "own" : "peer's",
      dump->header.owner_pid,
      static_cast<unsigned long long>(dump->header.data_bytes),
      dump->live_blocks.size(),
      static_cast<unsigned long long>(dump->live_bytes));
  std::vector<shmgrpc::shm::LiveBlockInfo> blocks = dump->live_blocks;
  std::sort(blocks.begin(), blocks.end(),
            [](const auto& a, const auto& b) { return a.age_ms > b.age_ms; });
  const size_t shown = all ? blocks.size() : std::min<size_t>(blocks.size(), 20);
  for (size_t i = 0; i < shown; ++i) {
    const auto& b = blocks[i];
    std::printf(
        "  offset %llu capacity %u requested %u stream %llu age %llu ms\n",
        static_cast<unsigned long long>(b.offset), b.capacity, b.requested,
        static_cast<unsigned long long>(b.stream_id),
        static_cast<unsigned long long>(b.age_ms));
  }
  if (shown < blocks.size()) {
    std::printf("  ... %zu more (--all lists them)\n", blocks.size() - shown);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  int pid = -1;
  bool all = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (absl::StartsWith(arg, "--pid=") &&
        absl::SimpleAtoi(arg.substr(6), &pid) && pid > 0) {
      continue;
    }
    if (arg == "--all") {
      all = true;
      continue;
    }
    std::fprintf(stderr, kUsage, argv[0]);
    std::fprintf(stderr, "bad argument: %s\n", arg.c_str());
    return 2;
  }
  if (pid <= 0) {
    std::fprintf(stderr, kUsage, argv[0]);
    return 2;
  }
  const std::string fd_dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* dir = opendir(fd_dir.c_str());
  if (dir == nullptr) {
    std::fprintf(stderr, "cannot list %s: %m\n", fd_dir.c_str());
    return 1;
  }
  int arenas = 0, failures = 0;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    char link[256];
    const std::string fd_path = fd_dir + "/" + entry->d_name;
    const ssize_t n = readlink(fd_path.c_str(), link, sizeof(link) - 1);
    if (n <= 0) continue;
    link[n] = '\0';
    if (!absl::StartsWith(link, "/memfd:shmgrpc")) continue;
    ++arenas;
    if (!DumpFd(pid, entry->d_name, link, all)) ++failures;
  }
  closedir(dir);
  std::printf("%d shmgrpc arena(s) in pid %d\n", arenas, pid);
  return failures == 0 ? 0 : 1;
}
