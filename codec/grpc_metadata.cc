#include "codec/grpc_metadata.h"

#include <string>

namespace shmgrpc::codec {

Metadata CopyMetadata(
    const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) {
  Metadata copy;
  copy.reserve(metadata.size());
  for (const auto& [key, value] : metadata) {
    copy.emplace_back(std::string(key.data(), key.size()),
                      std::string(value.data(), value.size()));
  }
  return copy;
}

}  // namespace shmgrpc::codec
