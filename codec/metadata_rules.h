// gRPC's rules for metadata, applied to metadata that crosses the shm
// transport before it is handed to gRPC.
//
// Why: gRPC treats an illegal key or value as API misuse and aborts the
// process (an assertion in call_op_set.h). The server injector adds each
// client's metadata to an in-process call, so one client sending "X-Upper"
// crashed the server until the injector checked it first.
#ifndef SHMGRPC_CODEC_METADATA_RULES_H_
#define SHMGRPC_CODEC_METADATA_RULES_H_

#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace shmgrpc::codec {

// OK when gRPC accepts the pair as metadata: a legal key (lowercase letters,
// digits, '-', '_', '.') and, for keys not ending in "-bin", a printable
// ASCII value. Otherwise InvalidArgument naming the problem.
absl::Status CheckMetadataEntry(absl::string_view key, absl::string_view value);

// What HTTP/2 and gRPC's limits add to each entry's key and value.
inline constexpr size_t kMetadataEntryOverhead = 32;

// Metadata size as HTTP/2 and gRPC's limits count it: key + value + 32 per
// entry. `Pairs`: any container of (key, value) string pairs.
template <typename Pairs>
size_t MetadataSize(const Pairs& metadata) {
  size_t size = 0;
  for (const auto& [key, value] : metadata) {
    size += key.size() + value.size() + kMetadataEntryOverhead;
  }
  return size;
}

}  // namespace shmgrpc::codec

#endif  // SHMGRPC_CODEC_METADATA_RULES_H_
