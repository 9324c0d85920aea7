#include "tests/server_process.h"

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "tests/peer_process.h"

namespace shmgrpc::testing {
namespace {

std::atomic<int> next_socket{0};

}  // namespace

int FreeTcpPort() {
  const int sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  bind(sock, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  getsockname(sock, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = ntohs(addr.sin_port);
  close(sock);
  return port;
}

std::string RunfilePath(const std::string& relative) {
  if (const char* srcdir = std::getenv("TEST_SRCDIR")) {
    const char* workspace = std::getenv("TEST_WORKSPACE");
    return absl::StrCat(srcdir, "/", workspace ? workspace : "shmgrpc", "/",
                        relative);
  }
  // `bazel run` or a direct ./bazel-bin/<pkg>/<binary> invocation.
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n > 0) {
    self[n] = '\0';
    const std::string exe(self);
    const std::string in_runfiles = exe + ".runfiles/shmgrpc/" + relative;
    if (access(in_runfiles.c_str(), X_OK) == 0) return in_runfiles;
    const std::string dir = exe.substr(0, exe.rfind('/'));
    const std::string sibling = dir.substr(0, dir.rfind('/')) + "/" + relative;
    if (access(sibling.c_str(), X_OK) == 0) return sibling;
  }
  return relative;
}

std::string FreshSocketPath() {
  // Unix socket paths are short (108 bytes), so not under TEST_TMPDIR. The
  // pid alone is not unique: sandboxed tests run in their own pid namespaces
  // and share /tmp, so a random part keeps concurrent tests apart.
  static const uint64_t run_id =
      (uint64_t{std::random_device()()} << 32) | std::random_device()();
  return absl::StrCat("/tmp/shmgrpc-", getpid(), "-", absl::Hex(run_id), "-",
                      next_socket.fetch_add(1), ".sock");
}

ChildProcess::ChildProcess(std::vector<std::string> args,
                           const std::string& ready_line,
                           const std::string& stderr_path) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) {
    status_ = absl::InternalError("pipe");
    return;
  }
  pid_ = fork();
  if (pid_ == 0) {
    dup2(out[1], STDOUT_FILENO);
    if (!stderr_path.empty()) {
      const int err = open(stderr_path.c_str(),
                           O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      if (err < 0) _exit(126);
      dup2(err, STDERR_FILENO);
    }
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out[1]);
  std::string seen;
  // An ASan build starts in ~1 s here when idle; a CI run that tested while
  // compiling once took over 10 s.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (seen.find(ready_line + "\n") == std::string::npos) {
    pollfd pfd{out[0], POLLIN, 0};
    const int left =
        static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (left <= 0 || poll(&pfd, 1, left) <= 0) {
      status_ = absl::DeadlineExceededError(
          absl::StrCat(args[0], " did not print '", ready_line, "'"));
      break;
    }
    char buf[64];
    const ssize_t n = read(out[0], buf, sizeof(buf));
    if (n <= 0) {
      status_ = absl::UnavailableError(
          absl::StrCat(args[0], " exited before printing '", ready_line, "'"));
      break;
    }
    seen.append(buf, n);
  }
  close(out[0]);
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0) Stop();
}

int ChildProcess::Kill() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGKILL);
  return Wait();
}

int ChildProcess::Stop() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  return Wait();
}

int ChildProcess::Wait() {
  if (pid_ <= 0) return -1;
  const int code = WaitPeer(pid_);
  pid_ = -1;
  return code;
}

std::optional<int> ChildProcess::WaitFor(absl::Duration timeout) {
  if (pid_ <= 0) return std::nullopt;
  const absl::Time give_up = absl::Now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t reaped = waitpid(pid_, &status, WNOHANG);
    if (reaped == pid_) {
      pid_ = -1;
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
      return -1;
    }
    if (reaped < 0 && errno != EINTR) return std::nullopt;
    if (absl::Now() >= give_up) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(10));
  }
}

namespace {

// Whether every thread of `pid` is stopped (or gone): state T, t, Z or X in
// /proc/PID/task/TID/stat, the field after the command's closing ')'.
bool AllThreadsStopped(pid_t pid) {
  const std::string tasks = absl::StrCat("/proc/", pid, "/task");
  DIR* dir = opendir(tasks.c_str());
  if (dir == nullptr) return false;
  bool stopped = true;
  while (const dirent* entry = readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    std::ifstream stat_file(absl::StrCat(tasks, "/", entry->d_name, "/stat"));
    const std::string stat((std::istreambuf_iterator<char>(stat_file)),
                           std::istreambuf_iterator<char>());
    const size_t paren = stat.rfind(')');
    if (paren == std::string::npos || paren + 2 >= stat.size()) continue;
    const char state = stat[paren + 2];  // gone meanwhile: empty, skipped
    if (state != 'T' && state != 't' && state != 'Z' && state != 'X') {
      stopped = false;
      break;
    }
  }
  closedir(dir);
  return stopped;
}

}  // namespace

absl::Status StopProcess(pid_t pid, absl::Duration timeout) {
  if (kill(pid, SIGSTOP) != 0) {
    return absl::InternalError(absl::StrCat("SIGSTOP: ", strerror(errno)));
  }
  const absl::Time give_up = absl::Now() + timeout;
  while (!AllThreadsStopped(pid)) {
    if (absl::Now() >= give_up) {
      return absl::DeadlineExceededError(
          absl::StrCat("process ", pid, " did not stop within ",
                       absl::FormatDuration(timeout)));
    }
    absl::SleepFor(absl::Microseconds(200));
  }
  return absl::OkStatus();
}

ServerProcess::ServerProcess(const std::string& style,
                             std::vector<std::string> extra_args,
                             std::string socket_path,
                             const std::string& stderr_path)
    : socket_path_(socket_path.empty() ? FreshSocketPath()
                                       : std::move(socket_path)) {
  std::vector<std::string> args = {RunfilePath("tests/echo_server"),
                                   "--socket=" + socket_path_,
                                   "--style=" + style};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  process_ =
      std::make_unique<ChildProcess>(std::move(args), "ready", stderr_path);
}

ServerProcess::~ServerProcess() { Stop(); }

int ServerProcess::Stop() {
  const int code = process_->Stop();
  unlink(socket_path_.c_str());
  return code;
}

}  // namespace shmgrpc::testing
