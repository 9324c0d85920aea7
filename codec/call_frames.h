// Encodings of the non-message frame payloads: call headers, metadata, status.
//
// Format: little-endian fixed-width integers and u32-length-prefixed byte
// strings, in the order of the struct fields; metadata is a u32 count then
// key/value pairs. Decoding never trusts a length: every read is checked
// against what is left, counts and sizes against `FrameLimits`, and trailing
// bytes are an error. Bad input is InvalidArgument, never a crash.
#ifndef SHMGRPC_CODEC_CALL_FRAMES_H_
#define SHMGRPC_CODEC_CALL_FRAMES_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace shmgrpc::codec {

using Metadata = std::vector<std::pair<std::string, std::string>>;

struct FrameLimits {
  size_t max_metadata_entries = 1024;
  size_t max_metadata_bytes = 64 * 1024;  // all keys + values of one frame
  size_t max_string_bytes = 64 * 1024;    // method, authority, status text
};

struct CallHeaders {
  std::string method;      // "/package.Service/Method"
  std::string authority;
  int64_t deadline_unix_nanos = 0;  // 0: no deadline
  Metadata metadata;
};

struct CallStatus {
  int32_t code = 0;  // grpc::StatusCode
  std::string message;
  std::string details;  // binary google.rpc.Status, may be empty
  Metadata trailing_metadata;
};

std::string EncodeCallHeaders(const CallHeaders& headers);
absl::StatusOr<CallHeaders> DecodeCallHeaders(absl::string_view bytes,
                                              const FrameLimits& limits = {});

std::string EncodeMetadata(const Metadata& metadata);
absl::StatusOr<Metadata> DecodeMetadata(absl::string_view bytes,
                                        const FrameLimits& limits = {});

std::string EncodeCallStatus(const CallStatus& status);
absl::StatusOr<CallStatus> DecodeCallStatus(absl::string_view bytes,
                                            const FrameLimits& limits = {});

}  // namespace shmgrpc::codec

#endif  // SHMGRPC_CODEC_CALL_FRAMES_H_
