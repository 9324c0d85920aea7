// The call-frame codecs (call headers, metadata, status) are where a
// peer's bytes are first read on both sides. Checked here: round trips of
// every field (binary values, empty strings, the limits exactly), refusal
// just past each limit, and that hostile input — every truncation, every
// single-byte change of a valid frame, random bytes — gets an error or
// decodes to a frame that encodes back to exactly those bytes: never a
// crash, never a frame that says something the bytes did not (under ASan
// in CI, never a read out of bounds either).
#include "codec/call_frames.h"

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace shmgrpc::codec {
namespace {

using std::string_literals::operator""s;

CallHeaders SampleHeaders() {
  CallHeaders headers;
  headers.method = "/shmgrpc.test.EchoService/Unary";
  headers.authority = "localhost";
  headers.deadline_unix_nanos = 1'790'000'000'123'456'789;
  headers.metadata = {{"x-trace", "abc"},
                      {"x-empty", ""},
                      {"x-blob-bin", "\0\xff\x01 binary"s}};
  return headers;
}

CallStatus SampleStatus() {
  CallStatus status;
  status.code = 9;  // FAILED_PRECONDITION
  status.message = "not now";
  status.details = "\x08\x09\x12\0details"s;
  status.trailing_metadata = {{"x-retry-hint", "later"}, {"k", ""}};
  return status;
}

// Decoding `bytes` either fails or gives a frame whose encoding is `bytes`
// again (the encoding is fixed-width and length-prefixed, with trailing
// bytes an error, so exactly one frame encodes to any accepted input).
// Returns whether it decoded.
bool DecodesCanonicallyOrFails(absl::string_view bytes,
                               const FrameLimits& limits = {}) {
  bool any = false;
  if (auto headers = DecodeCallHeaders(bytes, limits); headers.ok()) {
    EXPECT_EQ(EncodeCallHeaders(*headers), bytes);
    any = true;
  }
  if (auto metadata = DecodeMetadata(bytes, limits); metadata.ok()) {
    EXPECT_EQ(EncodeMetadata(*metadata), bytes);
    any = true;
  }
  if (auto status = DecodeCallStatus(bytes, limits); status.ok()) {
    EXPECT_EQ(EncodeCallStatus(*status), bytes);
    EXPECT_GE(status->code, 0);
    EXPECT_LE(status->code, 16);
    any = true;
  }
  return any;
}

TEST(CallFramesTest, EveryFieldRoundTrips) {
  const CallHeaders headers = SampleHeaders();
  auto decoded_headers = DecodeCallHeaders(EncodeCallHeaders(headers));
  ASSERT_TRUE(decoded_headers.ok()) << decoded_headers.status();
  EXPECT_EQ(decoded_headers->method, headers.method);
  EXPECT_EQ(decoded_headers->authority, headers.authority);
  EXPECT_EQ(decoded_headers->deadline_unix_nanos, headers.deadline_unix_nanos);
  EXPECT_EQ(decoded_headers->metadata, headers.metadata);

  const CallStatus status = SampleStatus();
  auto decoded_status = DecodeCallStatus(EncodeCallStatus(status));
  ASSERT_TRUE(decoded_status.ok()) << decoded_status.status();
  EXPECT_EQ(decoded_status->code, status.code);
  EXPECT_EQ(decoded_status->message, status.message);
  EXPECT_EQ(decoded_status->details, status.details);
  EXPECT_EQ(decoded_status->trailing_metadata, status.trailing_metadata);

  auto decoded_metadata = DecodeMetadata(EncodeMetadata(headers.metadata));
  ASSERT_TRUE(decoded_metadata.ok()) << decoded_metadata.status();
  EXPECT_EQ(*decoded_metadata, headers.metadata);

  auto empty = DecodeMetadata(EncodeMetadata({}));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->empty());
}

TEST(CallFramesTest, LimitsHoldExactlyAndRefuseOneMore) {
  FrameLimits limits;
  limits.max_metadata_entries = 4;
  limits.max_metadata_bytes = 100;
  limits.max_string_bytes = 50;

  CallHeaders headers = SampleHeaders();
  headers.metadata.clear();
  headers.method = "/" + std::string(limits.max_string_bytes - 1, 'm');
  EXPECT_TRUE(DecodeCallHeaders(EncodeCallHeaders(headers), limits).ok());
  headers.method += "m";
  EXPECT_FALSE(DecodeCallHeaders(EncodeCallHeaders(headers), limits).ok());

  Metadata entries(limits.max_metadata_entries, {"k", "v"});
  EXPECT_TRUE(DecodeMetadata(EncodeMetadata(entries), limits).ok());
  entries.push_back({"k", "v"});
  EXPECT_FALSE(DecodeMetadata(EncodeMetadata(entries), limits).ok());

  // All keys and values of one frame together, not each.
  Metadata bytes = {{"a", std::string(49, 'x')}, {"b", std::string(49, 'y')}};
  EXPECT_TRUE(DecodeMetadata(EncodeMetadata(bytes), limits).ok());
  bytes[1].second += "y";
  EXPECT_FALSE(DecodeMetadata(EncodeMetadata(bytes), limits).ok());

  CallStatus status = SampleStatus();
  status.trailing_metadata.clear();
  status.message = std::string(limits.max_string_bytes, 's');
  status.details = std::string(limits.max_metadata_bytes, 'd');
  EXPECT_TRUE(DecodeCallStatus(EncodeCallStatus(status), limits).ok());
  status.message += "s";
  EXPECT_FALSE(DecodeCallStatus(EncodeCallStatus(status), limits).ok());
  status.message.pop_back();
  status.details += "d";
  EXPECT_FALSE(DecodeCallStatus(EncodeCallStatus(status), limits).ok());
}

TEST(CallFramesTest, FramesThatSayNothingValidAreRefused) {
  CallHeaders headers = SampleHeaders();
  headers.method = "";
  EXPECT_FALSE(DecodeCallHeaders(EncodeCallHeaders(headers)).ok());
  headers.method = "EchoService/Unary";  // no leading '/'
  EXPECT_FALSE(DecodeCallHeaders(EncodeCallHeaders(headers)).ok());

  CallStatus status = SampleStatus();
  for (int32_t code : {-1, 17, INT32_MIN, INT32_MAX}) {
    status.code = code;
    EXPECT_FALSE(DecodeCallStatus(EncodeCallStatus(status)).ok()) << code;
  }
  status.code = 16;  // UNAUTHENTICATED, the last one
  EXPECT_TRUE(DecodeCallStatus(EncodeCallStatus(status)).ok());

  EXPECT_FALSE(DecodeMetadata("").ok());
  EXPECT_FALSE(DecodeCallHeaders("").ok());
  EXPECT_FALSE(DecodeCallStatus("").ok());
  // A length that claims more than is left, up to 4 GiB.
  std::string huge_count(4, '\xff');
  EXPECT_FALSE(DecodeMetadata(huge_count).ok());
  std::string huge_key = EncodeMetadata({{"k", "v"}});
  std::memset(&huge_key[4], 0xff, 4);
  EXPECT_FALSE(DecodeMetadata(huge_key).ok());
}

TEST(CallFramesTest, EveryTruncationAndTrailingByteIsRefused) {
  struct Case {
    std::string frame;
    bool (*decodes)(absl::string_view);  // as the frame's own kind
  };
  const Case cases[] = {
      {EncodeCallHeaders(SampleHeaders()),
       [](absl::string_view b) { return DecodeCallHeaders(b).ok(); }},
      {EncodeCallStatus(SampleStatus()),
       [](absl::string_view b) { return DecodeCallStatus(b).ok(); }},
      {EncodeMetadata(SampleHeaders().metadata),
       [](absl::string_view b) { return DecodeMetadata(b).ok(); }},
  };
  for (const Case& c : cases) {
    ASSERT_TRUE(c.decodes(c.frame));
    for (size_t cut = 0; cut < c.frame.size(); ++cut) {
      const absl::string_view prefix =
          absl::string_view(c.frame).substr(0, cut);
      EXPECT_FALSE(c.decodes(prefix)) << cut;
      // As another kind of frame it may decode, by chance of the layout,
      // but then exactly.
      DecodesCanonicallyOrFails(prefix);
    }
    EXPECT_FALSE(c.decodes(c.frame + "x"));
    EXPECT_FALSE(c.decodes(c.frame + std::string(1, '\0')));
  }
}

TEST(CallFramesTest, EverySingleByteChangeDecodesCanonicallyOrFails) {
  const std::vector<std::string> frames = {
      EncodeCallHeaders(SampleHeaders()), EncodeCallStatus(SampleStatus()),
      EncodeMetadata(SampleHeaders().metadata)};
  size_t accepted = 0, refused = 0;
  for (const std::string& frame : frames) {
    for (size_t i = 0; i < frame.size(); ++i) {
      for (int delta : {1, -1, 0x80, 0xff}) {
        std::string changed = frame;
        changed[i] = static_cast<char>(static_cast<uint8_t>(changed[i]) +
                                       static_cast<uint8_t>(delta));
        (DecodesCanonicallyOrFails(changed) ? accepted : refused)++;
      }
    }
  }
  // Changes inside strings are still valid frames; changes to lengths and
  // counts are not: both kinds must occur, or the sweep tested nothing.
  EXPECT_GT(accepted, 100u);
  EXPECT_GT(refused, 100u);
}

TEST(CallFramesTest, RandomBytesDecodeCanonicallyOrFail) {
  std::mt19937 random(20261127);
  // Small lengths and counts are likely (each u32 drawn from a few bytes
  // then zeros), so random input gets past the first fields often.
  auto small_u32 = [&](std::string* out) {
    const uint32_t v = random() % 24;
    out->append(reinterpret_cast<const char*>(&v), sizeof(v));
  };
  size_t accepted = 0;
  for (int round = 0; round < 50000; ++round) {
    std::string bytes;
    const int pieces = random() % 12;
    for (int p = 0; p < pieces; ++p) {
      if (random() % 2) {
        small_u32(&bytes);
      } else {
        const int n = random() % 8;
        for (int b = 0; b < n; ++b) {
          bytes.push_back(static_cast<char>(random()));
        }
      }
    }
    if (DecodesCanonicallyOrFails(bytes)) ++accepted;
  }
  EXPECT_GT(accepted, 0u);
}

}  // namespace
}  // namespace shmgrpc::codec
