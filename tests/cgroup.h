// Real cgroups for tests that put a process under a limit: a new child of
// this process's cgroup for one controller ("memory": bytes, "pids": tasks,
// i.e. threads), v1 or v2. Needs root and a writable controller; Create()
// says why not otherwise, and tests skip with that (CREATE_CGROUP_OR_SKIP).
#ifndef SHMGRPC_TESTS_CGROUP_H_
#define SHMGRPC_TESTS_CGROUP_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace shmgrpc::testing {

class Cgroup {
 public:
  // `controller` is "memory" (limit in bytes) or "pids" (most tasks).
  static absl::StatusOr<std::unique_ptr<Cgroup>> Create(
      const std::string& controller, uint64_t limit);
  // Removes it once its processes are gone (waiting up to 5 s for them).
  ~Cgroup();

  // Moves process `pid`, all its threads, into this cgroup.
  absl::Status Add(pid_t pid);
  // Sets the limit again; "max": none.
  absl::Status SetLimit(const std::string& limit);
  const std::string& dir() const { return dir_; }

 private:
  Cgroup(std::string dir, std::string limit_file)
      : dir_(std::move(dir)), limit_file_(std::move(limit_file)) {}
  std::string dir_;
  std::string limit_file_;
};

// Runs `args` in `cgroup` (it joins before exec, so everything it uses is
// charged there) and returns its wait status.
int RunInCgroup(Cgroup& cgroup, std::vector<std::string> args);

}  // namespace shmgrpc::testing

#define CREATE_CGROUP_OR_SKIP(var, controller, limit)                    \
  absl::StatusOr<std::unique_ptr<::shmgrpc::testing::Cgroup>> var##_or = \
      ::shmgrpc::testing::Cgroup::Create(controller, limit);             \
  if (!var##_or.ok()) {                                                  \
    GTEST_SKIP() << "no " << controller                                  \
                 << " cgroup to test in: " << var##_or.status();         \
  }                                                                      \
  std::unique_ptr<::shmgrpc::testing::Cgroup> var = std::move(*var##_or)

#endif  // SHMGRPC_TESTS_CGROUP_H_
