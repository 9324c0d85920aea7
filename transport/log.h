// One-line diagnostics to stderr for events an operator must be able to see
// (refused handshakes, hostile frames, dropped sessions). Not on hot paths.
#ifndef SHMGRPC_TRANSPORT_LOG_H_
#define SHMGRPC_TRANSPORT_LOG_H_

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"

namespace shmgrpc::transport {

template <typename... Args>
void ShmLog(const Args&... args) {
  const std::string line = absl::StrCat("shmgrpc: ", args..., "\n");
  std::fputs(line.c_str(), stderr);
}

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_LOG_H_
