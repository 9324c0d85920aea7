// Metadata as gRPC hands it out (a multimap of string_refs into a call's
// buffers, valid only while that call lives) copied into codec::Metadata,
// which outlives the call and is what the frames carry.
#ifndef SHMGRPC_CODEC_GRPC_METADATA_H_
#define SHMGRPC_CODEC_GRPC_METADATA_H_

#include <map>

#include "codec/call_frames.h"
#include "grpcpp/support/string_ref.h"

namespace shmgrpc::codec {

Metadata CopyMetadata(
    const std::multimap<grpc::string_ref, grpc::string_ref>& metadata);

}  // namespace shmgrpc::codec

#endif  // SHMGRPC_CODEC_GRPC_METADATA_H_
