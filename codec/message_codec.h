// Protobuf messages and gRPC byte buffers <-> arena memory.
//
// A message is written exactly once, into shared memory: the caller sizes the
// destination with SerializedSize and hands over one block, or a chain of
// blocks when no single block can hold it (the chunks are filled in order
// through a ZeroCopyOutputStream). Parsing reads straight out of the peer's
// arena, from one block or across a chain.
#ifndef SHMGRPC_CODEC_MESSAGE_CODEC_H_
#define SHMGRPC_CODEC_MESSAGE_CODEC_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "google/protobuf/message_lite.h"
#include "grpcpp/support/byte_buffer.h"

namespace shmgrpc::codec {

// Writable destination chunks, filled in order; their sizes add up to the
// message's size.
struct OutChunk {
  uint8_t* data;
  size_t size;
};
// Readable source chunks of one message, in order.
struct InChunk {
  const uint8_t* data;
  size_t size;
};

// Bytes `message` serializes to (also caches the sizes for SerializeInto).
size_t SerializedSize(const google::protobuf::MessageLite& message);

// Writes `message` into `chunks`, whose sizes add up to exactly the value
// SerializedSize just returned for this unchanged message.
void SerializeInto(const google::protobuf::MessageLite& message,
                   absl::Span<const OutChunk> chunks);

// Parses a message laid out in `chunks`, in place. InvalidArgument when the
// bytes are not a valid message of that type (gRPC reports that as INTERNAL).
absl::Status ParseFrom(absl::Span<const InChunk> chunks,
                       google::protobuf::MessageLite* message);

// Copies a byte buffer's slices into `chunks` (sizes adding up to
// buffer.Length()).
absl::Status CopyByteBuffer(const grpc::ByteBuffer& buffer,
                            absl::Span<const OutChunk> chunks);

}  // namespace shmgrpc::codec

#endif  // SHMGRPC_CODEC_MESSAGE_CODEC_H_
