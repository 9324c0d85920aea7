#include "codec/metadata_rules.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "grpc/grpc.h"
#include "grpc/slice.h"

namespace shmgrpc::codec {
namespace {

grpc_slice SliceOf(absl::string_view s) {
  return grpc_slice_from_static_buffer(s.data(), s.size());
}

}  // namespace

absl::Status CheckMetadataEntry(absl::string_view key,
                                absl::string_view value) {
  const grpc_slice key_slice = SliceOf(key);
  if (!grpc_header_key_is_legal(key_slice)) {
    return absl::InvalidArgumentError(
        absl::StrCat("illegal metadata key '", absl::CHexEscape(key), "'"));
  }
  if (!grpc_is_binary_header(key_slice) &&
      !grpc_header_nonbin_value_is_legal(SliceOf(value))) {
    return absl::InvalidArgumentError(
        absl::StrCat("illegal value for metadata key '", key,
                     "' (not printable ASCII; binary values need a -bin key)"));
  }
  return absl::OkStatus();
}

}  // namespace shmgrpc::codec
