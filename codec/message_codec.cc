#include "codec/message_codec.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream.h"

namespace shmgrpc::codec {
namespace {

// Hands out the destination chunks one by one. No BackUp is ever needed:
// the chunks add up to exactly the serialized size.
class ChunkOutputStream : public google::protobuf::io::ZeroCopyOutputStream {
 public:
  explicit ChunkOutputStream(absl::Span<const OutChunk> chunks)
      : chunks_(chunks) {}
  bool Next(void** data, int* size) override {
    if (next_ == chunks_.size()) return false;
    const OutChunk& chunk = chunks_[next_++];
    *data = chunk.data;
    *size = static_cast<int>(chunk.size);
    written_ += chunk.size;
    return true;
  }
  void BackUp(int count) override { written_ -= count; }
  int64_t ByteCount() const override { return written_; }

 private:
  absl::Span<const OutChunk> chunks_;
  size_t next_ = 0;
  int64_t written_ = 0;
};

// Reads the source chunks in order, in place.
class ChunkInputStream : public google::protobuf::io::ZeroCopyInputStream {
 public:
  explicit ChunkInputStream(absl::Span<const InChunk> chunks)
      : chunks_(chunks) {}
  bool Next(const void** data, int* size) override {
    while (chunk_ < chunks_.size() && offset_ == chunks_[chunk_].size) {
      ++chunk_;
      offset_ = 0;
    }
    if (chunk_ == chunks_.size()) return false;
    const InChunk& chunk = chunks_[chunk_];
    *data = chunk.data + offset_;
    *size = static_cast<int>(chunk.size - offset_);
    read_ += chunk.size - offset_;
    offset_ = chunk.size;
    return true;
  }
  // Only ever backs up into the chunk the last Next returned.
  void BackUp(int count) override {
    offset_ -= count;
    read_ -= count;
  }
  bool Skip(int count) override {
    const void* data;
    int size;
    while (count > 0 && Next(&data, &size)) {
      if (size > count) {
        BackUp(size - count);
        return true;
      }
      count -= size;
    }
    return count == 0;
  }
  int64_t ByteCount() const override { return read_; }

 private:
  absl::Span<const InChunk> chunks_;
  size_t chunk_ = 0;
  size_t offset_ = 0;
  int64_t read_ = 0;
};

}  // namespace

size_t SerializedSize(const google::protobuf::MessageLite& message) {
  return message.ByteSizeLong();
}

void SerializeInto(const google::protobuf::MessageLite& message,
                   absl::Span<const OutChunk> chunks) {
  if (chunks.size() == 1) {
    message.SerializeWithCachedSizesToArray(chunks[0].data);
    return;
  }
  ChunkOutputStream stream(chunks);
  google::protobuf::io::CodedOutputStream coded(&stream);
  message.SerializeWithCachedSizes(&coded);
}

absl::Status ParseFrom(absl::Span<const InChunk> chunks,
                       google::protobuf::MessageLite* message) {
  size_t size = 0;
  for (const InChunk& chunk : chunks) size += chunk.size;
  bool parsed;
  if (size > static_cast<size_t>(INT32_MAX)) {
    parsed = false;
  } else if (chunks.size() == 1) {
    parsed = message->ParseFromArray(chunks[0].data,
                                     static_cast<int>(chunks[0].size));
  } else {
    ChunkInputStream stream(chunks);
    parsed = message->ParseFromZeroCopyStream(&stream);
  }
  if (!parsed) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot parse a ", size, "-byte ", message->GetTypeName(), " (",
        chunks.size(), " chunks)"));
  }
  return absl::OkStatus();
}

absl::Status CopyByteBuffer(const grpc::ByteBuffer& buffer,
                            absl::Span<const OutChunk> chunks) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) {
    return absl::InternalError("cannot read the message's byte buffer");
  }
  size_t chunk = 0, chunk_offset = 0;
  for (const grpc::Slice& slice : slices) {
    const uint8_t* from = slice.begin();
    size_t left = slice.size();
    while (left > 0) {
      if (chunk == chunks.size()) {
        return absl::InternalError("byte buffer larger than its chunks");
      }
      const size_t n = std::min(left, chunks[chunk].size - chunk_offset);
      std::memcpy(chunks[chunk].data + chunk_offset, from, n);
      from += n;
      left -= n;
      chunk_offset += n;
      if (chunk_offset == chunks[chunk].size) {
        ++chunk;
        chunk_offset = 0;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace shmgrpc::codec
