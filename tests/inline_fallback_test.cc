// The shm layer's fallback, between two real processes: payloads that get no
// block (arena full, or larger than the whole arena) travel inline on the
// socket and still arrive in ring order; garbage and lies on the socket end
// the connection with DataLoss.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <deque>
#include <string>

#include "gtest/gtest.h"
#include "shm/endpoint.h"
#include "shm/ring.h"
#include "tests/peer_process.h"

namespace shmgrpc::shm {
namespace {

using ::shmgrpc::testing::Checksum;
using ::shmgrpc::testing::ConnectEndpoint;
using ::shmgrpc::testing::EndpointConfig;
using ::shmgrpc::testing::FillPayload;
using ::shmgrpc::testing::ForkPeer;
using ::shmgrpc::testing::WaitPeer;

constexpr uint16_t kDataType = 1;

// Sizes from 0 to 1.5 MiB; every 50th is larger than the 256 KiB arena.
size_t InlineMixSize(uint64_t seq) {
  const uint64_t h = (seq * 0x9e3779b97f4a7c15ull) >> 33;
  if (seq % 50 == 49) return (300 << 10) + h % (1200 << 10);
  if (seq % 7 == 0) return 0;
  return h % (48 << 10);
}

// Sends like the transport does: shared memory when a block can be had,
// inline otherwise. Exit codes name the failing step.
int ProduceWithFallback(Endpoint& endpoint, uint64_t count) {
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  for (uint64_t seq = 0; seq < count; ++seq) {
    const size_t size = InlineMixSize(seq);
    Descriptor d{kNoPayload, 0, kDataType, 0, seq, 0};
    absl::Status sent;
    if (size == 0) {
      sent = endpoint.Send(d, deadline);
    } else if (absl::StatusOr<Block> block = endpoint.Allocate(size, seq);
               block.ok()) {
      FillPayload(block->data, size, seq);
      d.offset = block->offset;
      d.length = static_cast<uint32_t>(size);
      d.aux = Checksum(block->data, size);
      sent = endpoint.Send(d, deadline);
    } else if (block.status().code() == absl::StatusCode::kResourceExhausted) {
      std::string heap(size, '\0');
      auto* bytes = reinterpret_cast<uint8_t*>(heap.data());
      FillPayload(bytes, size, seq);
      d.aux = Checksum(bytes, size);
      sent = endpoint.SendInline(d, std::move(heap), deadline);
    } else {
      return 2;
    }
    if (!sent.ok()) {
      std::fprintf(stderr, "send %llu: %s\n",
                   static_cast<unsigned long long>(seq),
                   sent.ToString().c_str());
      return 3;
    }
  }
  return 0;
}

TEST(InlineFallbackTest, ArenaFullAndOversizePayloadsArriveInOrderIntact) {
  constexpr uint64_t kMessages = 20000;
  EndpointConfig config;
  config.data_bytes = 256 << 10;  // tiny: the consumer's backlog fills it
  config.ring_slots = 256;

  auto peer = ForkPeer([&](int sock) {
    auto endpoint = ConnectEndpoint(sock, config, "producer");
    if (!endpoint.ok()) return 1;
    const int rc = ProduceWithFallback(**endpoint, kMessages);
    const EndpointStats stats = (*endpoint)->Stats();
    std::printf("producer: %llu inline (%llu bytes) of %llu messages\n",
                static_cast<unsigned long long>(stats.inline_sent),
                static_cast<unsigned long long>(stats.inline_bytes_sent),
                static_cast<unsigned long long>(stats.messages_sent));
    // Wait for the consumer to finish reading before closing.
    char byte;
    if (read(sock, &byte, 1) < 0) return 4;
    return rc;
  });
  ASSERT_TRUE(peer.ok()) << peer.status();
  auto endpoint = ConnectEndpoint(peer->sock, config, "consumer");
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();

  // Hold up to 12 messages before releasing, so the producer's small arena
  // keeps running out while messages are in flight.
  std::deque<ReceivedMessage> held;
  uint64_t inline_seen = 0, shm_seen = 0, returns_to_shm = 0;
  bool last_was_inline = false;
  for (uint64_t seq = 0; seq < kMessages; ++seq) {
    auto message = (*endpoint)->Receive(absl::Now() + absl::Seconds(30));
    ASSERT_TRUE(message.ok()) << "message " << seq << ": " << message.status();
    ASSERT_EQ(message->descriptor.tag, seq) << "out of order";
    const size_t size = InlineMixSize(seq);
    ASSERT_EQ(message->descriptor.length, size) << "message " << seq;
    if (size > 0) {
      ASSERT_EQ(Checksum(message->data, size), message->descriptor.aux)
          << "message " << seq << " corrupted";
    }
    if (message->inline_payload != nullptr) {
      ++inline_seen;
      last_was_inline = true;
      EXPECT_NE(message->descriptor.flags & kInlinePayloadFlag, 0);
    } else if (size > 0) {
      ++shm_seen;
      if (last_was_inline) ++returns_to_shm;
      last_was_inline = false;
    }
    held.push_back(*std::move(message));
    if (held.size() > 12) {
      (*endpoint)->Release(held.front());
      held.pop_front();
    }
  }
  for (const ReceivedMessage& message : held) (*endpoint)->Release(message);
  EXPECT_GE(inline_seen, kMessages / 50) << "oversize ones at least";
  EXPECT_GT(inline_seen, kMessages / 50) << "arena-full fallbacks expected";
  // No breaker: the first message after a fallback tries shm again.
  EXPECT_GT(shm_seen, kMessages / 50);
  EXPECT_GT(returns_to_shm, kMessages / 100);
  EXPECT_EQ((*endpoint)->Stats().inline_received, inline_seen);
  std::printf("consumer: %llu inline, %llu on shm, %llu returns to shm\n",
              static_cast<unsigned long long>(inline_seen),
              static_cast<unsigned long long>(shm_seen),
              static_cast<unsigned long long>(returns_to_shm));
  const char done = 1;
  ASSERT_EQ(write(peer->sock, &done, 1), 1);
  EXPECT_EQ(WaitPeer(peer->pid), 0);
}

// Records the peer has not read take the sender's heap, so they are bounded
// (InlineLimits::max_queued_bytes, 1 MiB here): a sender beyond that waits,
// until its deadline, for the peer to read, as it waits for a ring slot.
// Before, a peer that stopped reading let them grow without end. What was
// sent arrives intact and in order once the peer reads.
TEST(InlineFallbackTest, QueuedRecordsAreBoundedAndTheSenderWaitsForTheReader) {
  constexpr int kMessages = 64;
  constexpr size_t kSize = 64 << 10;
  constexpr size_t kMaxQueued = 1 << 20;
  EndpointConfig config;
  config.data_bytes = 256 << 10;
  config.inline_limits.max_queued_bytes = kMaxQueued;

  auto peer = ForkPeer([&](int sock) {
    auto endpoint = ConnectEndpoint(sock, config, "reader");
    if (!endpoint.ok()) return 1;
    usleep(1000 * 1000);  // reads nothing for a second
    for (int seq = 0; seq < kMessages; ++seq) {
      auto message = (*endpoint)->Receive(absl::Now() + absl::Seconds(30));
      if (!message.ok()) return 2;
      if (message->descriptor.tag != static_cast<uint64_t>(seq)) return 3;
      if (message->descriptor.length != kSize ||
          Checksum(message->data, kSize) != message->descriptor.aux) {
        return 4;
      }
    }
    const char done = 1;
    if (write(sock, &done, 1) != 1) return 5;
    char byte;
    if (read(sock, &byte, 1) < 0) return 6;  // until the sender closes
    return 0;
  });
  ASSERT_TRUE(peer.ok()) << peer.status();
  auto endpoint = ConnectEndpoint(peer->sock, config, "sender");
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();

  int sent = 0;
  auto send = [&](absl::Duration wait) {
    std::string bytes(kSize, '\0');
    FillPayload(reinterpret_cast<uint8_t*>(bytes.data()), kSize, sent);
    Descriptor d{
        kNoPayload,
        0,
        kDataType,
        0,
        static_cast<uint64_t>(sent),
        Checksum(reinterpret_cast<const uint8_t*>(bytes.data()), kSize)};
    absl::Status status =
        (*endpoint)->SendInline(d, std::move(bytes), absl::Now() + wait);
    if (status.ok()) ++sent;
    return status;
  };
  // While the reader sleeps: sends succeed until the queue is full (what
  // the socket's buffer took has left the queue), then one waits 100 ms and
  // gives up, sending nothing.
  absl::Status status;
  while (sent < kMessages && (status = send(absl::Milliseconds(100))).ok()) {
  }
  ASSERT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  const EndpointStats full = (*endpoint)->Stats();
  std::printf(
      "%d records of 64 KiB sent before the queue was full; peak "
      "%llu bytes queued\n",
      sent, static_cast<unsigned long long>(full.inline_queued_bytes_peak));
  EXPECT_LE(full.inline_queued_bytes_peak, kMaxQueued);
  EXPECT_GE(full.inline_queued_bytes_peak, kMaxQueued - kSize);
  // The one that gave up, and any that waited a moment for the writer to
  // move a record into the socket's buffer.
  EXPECT_GE(full.inline_queue_waits, 1u);
  // The rest wait for the reader, then go.
  while (sent < kMessages) {
    ASSERT_TRUE(send(absl::Seconds(30)).ok()) << "message " << sent;
  }
  EXPECT_LE((*endpoint)->Stats().inline_queued_bytes_peak, kMaxQueued);
  char done;  // the reader has read them all (closing drops what is queued)
  ASSERT_EQ(read(peer->sock, &done, 1), 1);
  endpoint->reset();  // the reader's last read ends
  EXPECT_EQ(WaitPeer(peer->pid), 0);
}

// A peer that writes `junk` on the socket after the exchange.
void ExpectJunkEndsTheConnection(const std::string& junk, bool with_descriptor,
                                 uint32_t descriptor_length) {
  EndpointConfig config;
  config.data_bytes = 1 << 20;
  auto peer = ForkPeer([&](int sock) {
    auto endpoint = ConnectEndpoint(sock, config, "liar");
    if (!endpoint.ok()) return 1;
    if (with_descriptor) {
      // An inline descriptor whose record will not match.
      Descriptor d{
          kNoPayload, descriptor_length, kDataType, kInlinePayloadFlag, 7, 0};
      if (!(*endpoint)->Send(d, absl::InfiniteFuture()).ok()) return 2;
    }
    if (send(sock, junk.data(), junk.size(), MSG_NOSIGNAL) !=
        static_cast<ssize_t>(junk.size())) {
      return 3;
    }
    char byte;
    if (read(sock, &byte, 1) < 0) return 4;  // until the victim closes
    return 0;
  });
  ASSERT_TRUE(peer.ok()) << peer.status();
  auto endpoint = ConnectEndpoint(peer->sock, config, "victim");
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  auto message = (*endpoint)->Receive(absl::Now() + absl::Seconds(10));
  ASSERT_FALSE(message.ok()) << "accepted a message from junk";
  EXPECT_EQ(message.status().code(), absl::StatusCode::kDataLoss)
      << message.status();
  endpoint->reset();
  EXPECT_EQ(WaitPeer(peer->pid), 0);
}

TEST(InlineFallbackTest, GarbageByteOnTheSocketIsDataLoss) {
  ExpectJunkEndsTheConnection(std::string("\x7f", 1), false, 0);
}

TEST(InlineFallbackTest, RecordLongerThanTheLimitIsDataLoss) {
  ExpectJunkEndsTheConnection(std::string("\x02\xff\xff\xff\x7f", 5), true, 16);
}

TEST(InlineFallbackTest, RecordOfTheWrongLengthIsDataLoss) {
  ExpectJunkEndsTheConnection(std::string("\x02\x03\x00\x00\x00"
                                          "abc",
                                          8),
                              true, 16);
}

TEST(InlineFallbackTest, InlineDescriptorPointingIntoTheArenaIsDataLoss) {
  EndpointConfig config;
  config.data_bytes = 1 << 20;
  auto peer = ForkPeer([&](int sock) {
    auto endpoint = ConnectEndpoint(sock, config, "liar");
    if (!endpoint.ok()) return 1;
    auto block = (*endpoint)->Allocate(16, 1);
    if (!block.ok()) return 2;
    Descriptor d{block->offset, 16, kDataType, kInlinePayloadFlag, 1, 0};
    if (!(*endpoint)->Send(d, absl::InfiniteFuture()).ok()) return 3;
    char byte;
    if (read(sock, &byte, 1) < 0) return 4;
    return 0;
  });
  ASSERT_TRUE(peer.ok()) << peer.status();
  auto endpoint = ConnectEndpoint(peer->sock, config, "victim");
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  auto message = (*endpoint)->Receive(absl::Now() + absl::Seconds(10));
  ASSERT_FALSE(message.ok());
  EXPECT_EQ(message.status().code(), absl::StatusCode::kDataLoss)
      << message.status();
  EXPECT_EQ((*endpoint)->Stats().invalid_descriptors, 1u);
  endpoint->reset();
  EXPECT_EQ(WaitPeer(peer->pid), 0);
}

}  // namespace
}  // namespace shmgrpc::shm
