#include "codec/message_codec.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace shmgrpc::codec {

size_t SerializedSize(const google::protobuf::MessageLite& message) {
  return message.ByteSizeLong();
}

void SerializeInto(const google::protobuf::MessageLite& message, size_t size,
                   uint8_t* out) {
  uint8_t* end = message.SerializeWithCachedSizesToArray(out);
  (void)size;
  (void)end;  // == out + size by SerializedSize's contract
}

absl::Status ParseFrom(const uint8_t* data, size_t size,
                       google::protobuf::MessageLite* message) {
  if (size > static_cast<size_t>(INT32_MAX) ||
      !message->ParseFromArray(data, static_cast<int>(size))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot parse a ", size, "-byte ", message->GetTypeName()));
  }
  return absl::OkStatus();
}

absl::Status CopyByteBuffer(const grpc::ByteBuffer& buffer, uint8_t* out) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) {
    return absl::InternalError("cannot read the message's byte buffer");
  }
  for (const grpc::Slice& slice : slices) {
    std::memcpy(out, slice.begin(), slice.size());
    out += slice.size();
  }
  return absl::OkStatus();
}

}  // namespace shmgrpc::codec
