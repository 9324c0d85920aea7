// Serializing into, and parsing out of, chains of chunks gives exactly the
// bytes and the message a single buffer does, for every way of cutting it.
#include "codec/message_codec.h"

#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/echo.pb.h"
#include "tests/echo_logic.h"

namespace shmgrpc::codec {
namespace {

// Cuts `size` bytes of `buffer` into chunks of random sizes (some empty).
template <typename Chunk, typename Byte>
std::vector<Chunk> Cut(Byte* buffer, size_t size, std::mt19937& random,
                       size_t max_chunk) {
  std::vector<Chunk> chunks;
  size_t offset = 0;
  while (offset < size) {
    const size_t n = std::min(size - offset, random() % (max_chunk + 1));
    chunks.push_back({buffer + offset, n});
    offset += n;
  }
  return chunks;
}

test::EchoRequest SampleRequest(size_t payload, int64_t seq) {
  test::EchoRequest request;
  test::FillRequest(&request, payload, seq);
  request.set_error_message("some text");
  request.set_reply_count(7);
  return request;
}

TEST(MessageCodecTest, ChainedSerializationMatchesOneBuffer) {
  std::mt19937 random(3);
  for (size_t payload : {size_t{0}, size_t{1}, size_t{100}, size_t{70000},
                         size_t{1} << 20}) {
    for (size_t max_chunk : {size_t{1}, size_t{7}, size_t{4096},
                             size_t{65504}}) {
      if (payload > 100000 && max_chunk < 4096) continue;  // keep it quick
      const test::EchoRequest request = SampleRequest(payload, 42);
      const size_t size = SerializedSize(request);
      const std::string expected = request.SerializeAsString();
      ASSERT_EQ(size, expected.size());
      std::string out(size, '\0');
      auto* bytes = reinterpret_cast<uint8_t*>(out.data());
      SerializeInto(request, Cut<OutChunk>(bytes, size, random, max_chunk));
      EXPECT_EQ(out, expected) << payload << " / " << max_chunk;

      test::EchoRequest parsed;
      ASSERT_TRUE(ParseFrom(Cut<InChunk>(static_cast<const uint8_t*>(bytes),
                                         size, random, max_chunk),
                            &parsed)
                      .ok());
      EXPECT_EQ(parsed.SerializeAsString(), expected);
      EXPECT_TRUE(test::PayloadIntact(parsed));
    }
  }
}

TEST(MessageCodecTest, ByteBufferCopiesAcrossChunks) {
  std::mt19937 random(4);
  std::string data(300000, '\0');
  for (char& c : data) c = static_cast<char>(random());
  // A buffer of several slices, cut into chunks elsewhere.
  std::vector<grpc::Slice> slices;
  for (size_t offset = 0; offset < data.size(); offset += 70001) {
    slices.emplace_back(data.data() + offset,
                        std::min<size_t>(70001, data.size() - offset));
  }
  const grpc::ByteBuffer buffer(slices.data(), slices.size());
  std::string out(data.size(), '\0');
  ASSERT_TRUE(CopyByteBuffer(buffer,
                             Cut<OutChunk>(reinterpret_cast<uint8_t*>(
                                               out.data()),
                                           out.size(), random, 65504))
                  .ok());
  EXPECT_EQ(out, data);
}

TEST(MessageCodecTest, TruncatedChainIsAnError) {
  const test::EchoRequest request = SampleRequest(5000, 1);
  const std::string bytes = request.SerializeAsString();
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  const InChunk chunks[] = {{data, 1000}, {data + 1000, 2000}};  // no tail
  test::EchoRequest parsed;
  EXPECT_EQ(ParseFrom(chunks, &parsed).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace shmgrpc::codec
