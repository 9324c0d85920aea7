#include "tests/cgroup.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/algorithm/container.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace shmgrpc::testing {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  const int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat(path, ": ", strerror(errno)));
  }
  const ssize_t n = write(fd, text.data(), text.size());
  const int err = errno;
  close(fd);
  if (n != static_cast<ssize_t>(text.size())) {
    return absl::InternalError(
        absl::StrCat("write ", path, ": ", strerror(err)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Cgroup>> Cgroup::Create(
    const std::string& controller, uint64_t limit) {
  // v1 hierarchies are listed by controller, v2 as "0::path".
  std::string v1_path, v2_path;
  bool have_v1 = false, have_v2 = false;
  for (absl::string_view line :
       absl::StrSplit(ReadFile("/proc/self/cgroup"), '\n')) {
    std::vector<std::string> f = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (f.size() != 3) continue;
    if (f[0] == "0" && f[1].empty()) {
      v2_path = f[2];
      have_v2 = true;
    } else if (absl::c_linear_search(
                   std::vector<std::string>(absl::StrSplit(f[1], ',')),
                   controller)) {
      v1_path = f[2];
      have_v1 = true;
    }
  }
  static int counter = 0;
  const std::string name =
      absl::StrCat("/shmgrpc-test-", getpid(), "-", counter++);
  std::string dir, limit_file;
  if (have_v1) {
    dir = "/sys/fs/cgroup/" + controller +
          (v1_path == "/" ? std::string() : v1_path) + name;
    limit_file =
        controller == "memory" ? "memory.limit_in_bytes" : controller + ".max";
  } else if (have_v2) {
    dir = "/sys/fs/cgroup" + (v2_path == "/" ? std::string() : v2_path) + name;
    limit_file = controller + ".max";
  } else {
    return absl::UnavailableError(
        absl::StrCat("no ", controller, " cgroup in /proc/self/cgroup"));
  }
  if (mkdir(dir.c_str(), 0755) != 0) {
    return absl::UnavailableError(
        absl::StrCat("mkdir ", dir, ": ", strerror(errno)));
  }
  auto group = std::unique_ptr<Cgroup>(new Cgroup(dir, limit_file));
  if (!have_v1 &&
      !absl::StrContains(ReadFile(dir + "/cgroup.controllers"), controller)) {
    return absl::UnavailableError(
        absl::StrCat("no ", controller, " controller below ", dir));
  }
  if (absl::Status s = group->SetLimit(std::to_string(limit)); !s.ok()) {
    return s;
  }
  return group;
}

Cgroup::~Cgroup() {
  // Exiting members may take a moment to leave.
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while (rmdir(dir_.c_str()) != 0 && errno == EBUSY && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
}

absl::Status Cgroup::Add(pid_t pid) {
  return WriteFile(dir_ + "/cgroup.procs", std::to_string(pid));
}

absl::Status Cgroup::SetLimit(const std::string& limit) {
  return WriteFile(dir_ + "/" + limit_file_, limit);
}

int RunInCgroup(Cgroup& cgroup, std::vector<std::string> args) {
  const std::string procs = cgroup.dir() + "/cgroup.procs";
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = open(procs.c_str(), O_WRONLY);
    const std::string self = std::to_string(getpid());
    if (fd < 0 || write(fd, self.data(), self.size()) < 0) _exit(126);
    close(fd);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

}  // namespace shmgrpc::testing
