// Protobuf messages and gRPC byte buffers <-> arena memory.
//
// Serialization goes straight into the destination block (the caller sizes
// the block with SerializedSize), so a message is written exactly once, into
// shared memory. Parsing reads straight out of the peer's arena.
#ifndef SHMGRPC_CODEC_MESSAGE_CODEC_H_
#define SHMGRPC_CODEC_MESSAGE_CODEC_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "google/protobuf/message_lite.h"
#include "grpcpp/support/byte_buffer.h"

namespace shmgrpc::codec {

// Bytes `message` serializes to (also caches the sizes for SerializeInto).
size_t SerializedSize(const google::protobuf::MessageLite& message);

// Writes `message` into `out`, which has room for exactly `size` bytes, the
// value SerializedSize just returned for this unchanged message.
void SerializeInto(const google::protobuf::MessageLite& message, size_t size,
                   uint8_t* out);

// Parses `size` bytes in place. InvalidArgument when they are not a valid
// message of that type (gRPC reports that as INTERNAL to the caller).
absl::Status ParseFrom(const uint8_t* data, size_t size,
                       google::protobuf::MessageLite* message);

// Copies a byte buffer's slices into `out` (room for buffer.Length() bytes).
absl::Status CopyByteBuffer(const grpc::ByteBuffer& buffer, uint8_t* out);

}  // namespace shmgrpc::codec

#endif  // SHMGRPC_CODEC_MESSAGE_CODEC_H_
