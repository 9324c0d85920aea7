// ServerProcess: runs tests/echo_server as a separate process for a test.
//
// Starts it with a fresh socket path, waits for its "ready" line, and on
// destruction stops it with SIGTERM (or SIGKILL when asked) and reaps it.
#ifndef SHMGRPC_TESTS_SERVER_PROCESS_H_
#define SHMGRPC_TESTS_SERVER_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace shmgrpc::testing {

class ServerProcess {
 public:
  // `style`: sync | callback | async. `extra_args` go to echo_server.
  explicit ServerProcess(const std::string& style,
                         std::vector<std::string> extra_args = {});
  ~ServerProcess();

  // OK once the server printed "ready" (within 10 s).
  const absl::Status& status() const { return status_; }
  std::string target() const { return "unix:" + socket_path_; }
  const std::string& socket_path() const { return socket_path_; }
  pid_t pid() const { return pid_; }

  // SIGKILL now; returns the wait status code (128 + 9 expected).
  int Kill();
  // SIGTERM and wait; returns its exit code.
  int Stop();

 private:
  std::string socket_path_;
  pid_t pid_ = -1;
  absl::Status status_;
};

// Path of a binary built next to the test (Bazel runfiles aware).
std::string RunfilePath(const std::string& relative);

}  // namespace shmgrpc::testing

#endif  // SHMGRPC_TESTS_SERVER_PROCESS_H_
