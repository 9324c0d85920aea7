// Test binaries run as separate processes.
//
// ChildProcess runs a program, waits until it prints a given line on stdout,
// and on destruction stops it with SIGTERM and reaps it.
// ServerProcess runs tests/echo_server on a fresh (or given) socket path and
// waits for its "ready" line.
#ifndef SHMGRPC_TESTS_SERVER_PROCESS_H_
#define SHMGRPC_TESTS_SERVER_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace shmgrpc::testing {

class ChildProcess {
 public:
  // `args[0]` is the program. Waits up to 10 s for `ready_line` on stdout.
  // Its stderr is this process's, or the file `stderr_path` when given.
  ChildProcess(std::vector<std::string> args, const std::string& ready_line,
               const std::string& stderr_path = "");
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // OK once the line was printed.
  const absl::Status& status() const { return status_; }
  pid_t pid() const { return pid_; }
  // SIGKILL now; returns the wait status code (128 + 9 expected).
  int Kill();
  // SIGTERM and wait; returns its exit code.
  int Stop();
  // Waits for it to exit on its own; returns its exit code.
  int Wait();
  // The same, for at most `timeout`: nullopt if it still runs then.
  std::optional<int> WaitFor(absl::Duration timeout);

 private:
  pid_t pid_ = -1;
  absl::Status status_;
};

class ServerProcess {
 public:
  // `style`: sync | callback | async. `extra_args` go to echo_server. An
  // empty `socket_path` picks a fresh one. `stderr_path`: where its stderr
  // goes (a file the test reads), else to this process's.
  explicit ServerProcess(const std::string& style,
                         std::vector<std::string> extra_args = {},
                         std::string socket_path = "",
                         const std::string& stderr_path = "");
  ~ServerProcess();

  // OK once the server printed "ready" (within 10 s).
  const absl::Status& status() const { return process_->status(); }
  std::string target() const { return "unix:" + socket_path_; }
  const std::string& socket_path() const { return socket_path_; }
  pid_t pid() const { return process_->pid(); }

  int Kill() { return process_->Kill(); }
  int Stop();

 private:
  std::string socket_path_;
  std::unique_ptr<ChildProcess> process_;
};

// Stops process `pid` (SIGSTOP) and returns once every thread of it has
// stopped. kill() returns before that: the kernel wakes one thread to take
// the signal, and only when that one runs does it stop the others, which
// run on meanwhile (under load a "stopped" server answered a call 1.7 ms
// after kill() returned, 1 run in 40). DeadlineExceeded if some thread
// still runs after `timeout`.
absl::Status StopProcess(pid_t pid, absl::Duration timeout = absl::Seconds(5));

// A fresh unix socket path for this test process.
std::string FreshSocketPath();

// A loopback TCP port free at the time of the call (the kernel's pick).
int FreeTcpPort();

// Path of a binary built next to the test (Bazel runfiles aware).
std::string RunfilePath(const std::string& relative);

}  // namespace shmgrpc::testing

#endif  // SHMGRPC_TESTS_SERVER_PROCESS_H_
