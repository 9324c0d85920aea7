// Two real processes, real memfds, a real unix socket: ordered checksummed
// traffic in every wait strategy, doorbell suppression, hostile descriptors
// and a peer killed with SIGKILL.
#include "shm/endpoint.h"

#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "shm/ring.h"
#include "tests/peer_process.h"

namespace shmgrpc::shm {
namespace {

using ::shmgrpc::testing::Checksum;
using ::shmgrpc::testing::ConnectEndpoint;
using ::shmgrpc::testing::EndpointConfig;
using ::shmgrpc::testing::ExchangeSegments;
using ::shmgrpc::testing::FillPayload;
using ::shmgrpc::testing::ForkPeer;
using ::shmgrpc::testing::WaitPeer;

constexpr uint16_t kDataType = 1;
constexpr uint16_t kSummaryType = 2;

// A frame without payload.
Descriptor EmptyFrame(uint16_t type, uint64_t tag, uint64_t aux = 0) {
  return Descriptor{kNoPayload, 0, type, 0, tag, aux};
}

// Mixed sizes: mostly small, some medium, a few up to 1 MiB, some empty.
size_t MixedSize(uint64_t seq) {
  const uint64_t h = (seq * 0x9e3779b97f4a7c15ull) >> 32;
  const uint64_t bucket = h % 1000;
  if (bucket < 50) return 0;
  if (bucket < 650) return h % 256;
  if (bucket < 970) return 256 + h % 8000;
  if (bucket < 999) return 8192 + h % 57000;
  return 65536 + h % (1 << 20);
}

// Sends `count` messages; retries allocation while the arena is full (the
// consumer's releases free it). Returns 0 on success, else a failing step.
int ProduceMixed(Endpoint& endpoint, uint64_t count) {
  const absl::Time deadline = absl::Now() + absl::Seconds(120);
  for (uint64_t seq = 0; seq < count; ++seq) {
    const size_t size = MixedSize(seq);
    Descriptor d{kNoPayload, static_cast<uint32_t>(size), kDataType, 0, seq, 0};
    if (size > 0) {
      absl::StatusOr<Block> block;
      while (!(block = endpoint.Allocate(size, seq)).ok()) {
        if (block.status().code() != absl::StatusCode::kResourceExhausted) {
          return 2;
        }
        usleep(20);
      }
      FillPayload(block->data, size, seq);
      d.offset = block->offset;
      d.aux = Checksum(block->data, size);
    }
    if (absl::Status s = endpoint.Send(d, deadline); !s.ok()) {
      std::fprintf(stderr, "send %lu: %s\n", static_cast<unsigned long>(seq),
                   s.ToString().c_str());
      return 3;
    }
  }
  return 0;
}

class EndpointTrafficTest : public ::testing::TestWithParam<WaitStrategy> {};

TEST_P(EndpointTrafficTest, MillionMixedMessagesArriveInOrderIntact) {
  constexpr uint64_t kMessages = 1000000;
  EndpointConfig config;
  config.data_bytes = 32ull << 20;
  config.wait.strategy = GetParam();

  auto peer = ForkPeer([&](int sock) {
    auto endpoint = ConnectEndpoint(sock, config, "producer");
    if (!endpoint.ok()) return 1;
    if (int rc = ProduceMixed(**endpoint, kMessages); rc != 0) return rc;
    // The consumer answers with what it saw, on the reverse ring.
    auto summary = (*endpoint)->Receive(absl::Now() + absl::Seconds(60));
    if (!summary.ok() || summary->descriptor.type != kSummaryType ||
        summary->descriptor.tag != kMessages) {
      return 4;
    }
    // Everything the consumer got was released back to us.
    if ((*endpoint)->Allocate(1, 0).ok() &&
        (*endpoint)->Stats().arena.blocks_in_use != 1) {
      return 5;
    }
    return 0;
  });
  ASSERT_TRUE(peer.ok()) << peer.status();
  auto endpoint = ConnectEndpoint(peer->sock, config, "consumer");
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();

  uint64_t bad = 0;
  for (uint64_t seq = 0; seq < kMessages; ++seq) {
    auto message = (*endpoint)->Receive(absl::Now() + absl::Seconds(60));
    ASSERT_TRUE(message.ok()) << "seq " << seq << ": " << message.status();
    const Descriptor& d = message->descriptor;
    if (d.tag != seq || d.length != MixedSize(seq) ||
        (d.length > 0 && Checksum(message->data, d.length) != d.aux)) {
      if (++bad < 5) ADD_FAILURE() << "message " << seq << " is wrong";
    }
    (*endpoint)->Release(*message);
  }
  EXPECT_EQ(bad, 0u);
  const Descriptor summary = EmptyFrame(kSummaryType, kMessages, bad);
  ASSERT_TRUE((*endpoint)->Send(summary, absl::Now() + absl::Seconds(10)).ok());
  EXPECT_EQ(WaitPeer(peer->pid), 0);

  const EndpointStats stats = (*endpoint)->Stats();
  EXPECT_EQ(stats.messages_received, kMessages);
  EXPECT_EQ(stats.invalid_descriptors, 0u);
  std::printf("[%s] %s\n", std::string(WaitStrategyName(GetParam())).c_str(),
              ToString(stats).c_str());
}

INSTANTIATE_TEST_SUITE_P(
    AllStrategies, EndpointTrafficTest,
    ::testing::Values(WaitStrategy::kNotify, WaitStrategy::kPoll,
                      WaitStrategy::kPeriodic),
    [](const ::testing::TestParamInfo<WaitStrategy>& info) {
      return std::string(WaitStrategyName(info.param));
    });

TEST(EndpointTest, DenseOneWayTrafficRarelyRingsTheDoorbell) {
  constexpr uint64_t kMessages = 300000;
  EndpointConfig config;
  config.data_bytes = 8ull << 20;
  auto peer = ForkPeer([&](int sock) {
    auto endpoint = ConnectEndpoint(sock, config, "producer");
    if (!endpoint.ok()) return 1;
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    for (uint64_t seq = 0; seq < kMessages; ++seq) {
      absl::StatusOr<Block> block;
      while (!(block = (*endpoint)->Allocate(64, seq)).ok()) usleep(10);
      FillPayload(block->data, 64, seq);
      Descriptor d{
          block->offset, 64, kDataType, 0, seq, Checksum(block->data, 64)};
      if (!(*endpoint)->Send(d, deadline).ok()) return 3;
    }
    const EndpointStats stats = (*endpoint)->Stats();
    // The producer's doorbell counts travel back in a summary message.
    Descriptor summary{kNoPayload,           0,
                       kSummaryType,         0,
                       stats.doorbells_sent, stats.doorbells_suppressed};
    if (!(*endpoint)->Send(summary, deadline).ok()) return 4;
    return 0;
  });
  ASSERT_TRUE(peer.ok()) << peer.status();
  auto endpoint = ConnectEndpoint(peer->sock, config, "consumer");
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  for (uint64_t seq = 0; seq < kMessages; ++seq) {
    auto message = (*endpoint)->Receive(absl::Now() + absl::Seconds(60));
    ASSERT_TRUE(message.ok()) << message.status();
    ASSERT_EQ(message->descriptor.tag, seq);
    ASSERT_EQ(Checksum(message->data, 64), message->descriptor.aux);
    (*endpoint)->Release(*message);
  }
  auto summary = (*endpoint)->Receive(absl::Now() + absl::Seconds(60));
  ASSERT_TRUE(summary.ok()) << summary.status();
  ASSERT_EQ(summary->descriptor.type, kSummaryType);
  EXPECT_EQ(WaitPeer(peer->pid), 0);
  const uint64_t doorbells = summary->descriptor.tag;
  const uint64_t suppressed = summary->descriptor.aux;
  EXPECT_EQ(doorbells + suppressed, kMessages);
  const double per_message = static_cast<double>(doorbells) / kMessages;
  std::printf("doorbells sent %lu, suppressed %lu: %.5f per message\n",
              static_cast<unsigned long>(doorbells),
              static_cast<unsigned long>(suppressed), per_message);
  EXPECT_LT(per_message, 0.05);
}

// TrySendAll publishes a batch whole or not at all: a batch larger than the
// free ring is refused with nothing of it visible to the peer, and one that
// fits arrives complete and in order.
TEST(EndpointTest, TrySendAllPublishesAllOrNone) {
  EndpointConfig config;
  config.ring_slots = 8;
  constexpr uint64_t kRefusedTag = 100;
  auto peer = ForkPeer([&](int sock) {
    auto endpoint = ConnectEndpoint(sock, config, "producer");
    if (!endpoint.ok()) return 1;
    std::vector<Descriptor> too_many, fitting;
    for (uint64_t i = 0; i < 9; ++i) {
      too_many.push_back(EmptyFrame(kDataType, kRefusedTag + i));
    }
    for (uint64_t i = 0; i < 8; ++i) fitting.push_back(EmptyFrame(kDataType, i));
    if ((*endpoint)->TrySendAll(too_many).code() !=
        absl::StatusCode::kResourceExhausted) {
      return 2;
    }
    if (!(*endpoint)->TrySendAll(fitting).ok()) return 3;
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    if (!(*endpoint)->Send(EmptyFrame(kSummaryType, 8), deadline).ok()) {
      return 4;
    }
    return 0;
  });
  ASSERT_TRUE(peer.ok()) << peer.status();
  auto endpoint = ConnectEndpoint(peer->sock, config, "consumer");
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  for (uint64_t tag = 0; tag <= 8; ++tag) {
    auto message = (*endpoint)->Receive(absl::Now() + absl::Seconds(10));
    ASSERT_TRUE(message.ok()) << message.status();
    EXPECT_EQ(message->descriptor.tag, tag)
        << "a frame of the refused batch was published";
    (*endpoint)->Release(*message);
  }
  EXPECT_EQ(WaitPeer(peer->pid), 0);
}

// Both processes on one CPU, both spinning (poll): a spinner that only
// paused would hold the core for its whole time slice (milliseconds) while
// the peer that must answer waits in the run queue. Spinners yield, so a
// round trip costs a few context switches, not two time slices.
TEST(EndpointTest, SpinnersOnOneCoreYieldToTheirPeer) {
  constexpr uint64_t kRoundTrips = 2000;
  cpu_set_t one_cpu;
  CPU_ZERO(&one_cpu);
  cpu_set_t allowed;
  ASSERT_EQ(sched_getaffinity(0, sizeof(allowed), &allowed), 0);
  int cpu = 0;
  while (!CPU_ISSET(cpu, &allowed)) ++cpu;
  CPU_SET(cpu, &one_cpu);
  // Set before the fork, so the child inherits it; restored on any exit.
  ASSERT_EQ(sched_setaffinity(0, sizeof(one_cpu), &one_cpu), 0);
  struct RestoreAffinity {
    cpu_set_t* allowed;
    ~RestoreAffinity() { sched_setaffinity(0, sizeof(*allowed), allowed); }
  } restore{&allowed};

  EndpointConfig config;
  config.data_bytes = 1 << 20;
  config.wait.strategy = WaitStrategy::kPoll;
  auto peer = ForkPeer([&](int sock) {
    auto endpoint = ConnectEndpoint(sock, config, "echo");
    if (!endpoint.ok()) return 1;
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    for (uint64_t i = 0; i < kRoundTrips; ++i) {
      auto message = (*endpoint)->Receive(deadline);
      if (!message.ok()) return 2;
      if (!(*endpoint)->Send(message->descriptor, deadline).ok()) return 3;
    }
    return 0;
  });
  ASSERT_TRUE(peer.ok()) << peer.status();
  auto endpoint = ConnectEndpoint(peer->sock, config, "caller");
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  std::vector<absl::Duration> round_trips;
  round_trips.reserve(kRoundTrips);
  for (uint64_t i = 0; i < kRoundTrips; ++i) {
    const absl::Time start = absl::Now();
    const Descriptor d = EmptyFrame(kDataType, i);
    ASSERT_TRUE((*endpoint)->Send(d, deadline).ok());
    auto reply = (*endpoint)->Receive(deadline);
    ASSERT_TRUE(reply.ok()) << reply.status();
    ASSERT_EQ(reply->descriptor.tag, i);
    round_trips.push_back(absl::Now() - start);
  }
  EXPECT_EQ(WaitPeer(peer->pid), 0);
  std::sort(round_trips.begin(), round_trips.end());
  const absl::Duration median = round_trips[kRoundTrips / 2];
  std::printf("%lu round trips on one CPU, both polling: median %s, max %s\n",
              static_cast<unsigned long>(kRoundTrips),
              absl::FormatDuration(median).c_str(),
              absl::FormatDuration(round_trips.back()).c_str());
  // Pause-only spinners take two time slices per round trip: 8 ms each
  // measured here, vs ~11 us when they yield. The median ignores the odd
  // round trip another process's time slice lands in.
  EXPECT_LT(median, absl::Milliseconds(1));
}

// The child plays a hostile producer: it writes descriptors straight into its
// own ring, bypassing Endpoint::Send.
TEST(EndpointTest, HostileDescriptorsAreRejectedAndTheRingKeepsWorking) {
  EndpointConfig config;
  config.data_bytes = 1 << 20;
  config.ring_slots = 64;
  const uint64_t data_bytes = config.data_bytes;
  const Descriptor hostile[] = {
      {data_bytes, 16, kDataType, 0, 100, 0},         // past the end
      {data_bytes - 64, 4096, kDataType, 0, 101, 0},  // overruns end
      {~uint64_t{0} - 31, 64, kDataType, 0, 102, 0},  // wraps around
      {64, UINT32_MAX, kDataType, 0, 103, 0},         // length overflow
      {48, 16, kDataType, 0, 104, 0},                 // misaligned
      {kNoPayload, 1, kDataType, 0, 105, 0},          // no payload + len
  };
  auto peer = ForkPeer([&](int sock) {
    auto segments = ExchangeSegments(sock, config, "hostile");
    if (!segments.ok()) return 1;
    auto* producer = reinterpret_cast<RingProducerState*>(
        segments->local->mutable_base() +
        segments->local_layout.data_ring_offset);
    RingWriter writer(producer,
                      reinterpret_cast<const RingConsumerState*>(
                          segments->peer->base() +
                          segments->peer_layout.data_consumer_offset),
                      segments->local_layout.ring_slots);
    for (const Descriptor& d : hostile) {
      if (writer.Stage(d) != RingWriter::Result::kOk) return 2;
    }
    // Then one honest message.
    uint8_t* data =
        segments->local->mutable_base() + segments->local_layout.data_offset;
    std::memcpy(data + 64, "honest", 6);
    if (writer.Stage({64, 6, kDataType, 0, 200, 0}) !=
        RingWriter::Result::kOk) {
      return 3;
    }
    writer.Publish();
    SideChannel(sock, InlineLimits()).Ring().IgnoreError();
    // Wait until the consumer has taken everything, then lie about the tail.
    while (
        segments->peer->base() != nullptr &&
        reinterpret_cast<const RingConsumerState*>(
            segments->peer->base() + segments->peer_layout.data_consumer_offset)
                ->head.load() != writer.published()) {
      usleep(100);
    }
    producer->tail.store(writer.published() + 1000);
    SideChannel(sock, InlineLimits()).Ring().IgnoreError();
    char byte;
    read(sock, &byte, 1);  // until the consumer closes
    return 0;
  });
  ASSERT_TRUE(peer.ok()) << peer.status();
  auto endpoint = ConnectEndpoint(peer->sock, config, "victim");
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  for (const Descriptor& d : hostile) {
    auto message = (*endpoint)->Receive(absl::Now() + absl::Seconds(10));
    ASSERT_FALSE(message.ok()) << "tag " << d.tag << " was accepted";
    EXPECT_EQ(message.status().code(), absl::StatusCode::kInvalidArgument)
        << message.status();
  }
  auto honest = (*endpoint)->Receive(absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(honest.ok()) << honest.status();
  EXPECT_EQ(honest->descriptor.tag, 200u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(honest->data), 6),
            "honest");
  EXPECT_EQ((*endpoint)->Stats().invalid_descriptors, 6u);

  auto corrupt = (*endpoint)->Receive(absl::Now() + absl::Seconds(10));
  ASSERT_FALSE(corrupt.ok());
  EXPECT_EQ(corrupt.status().code(), absl::StatusCode::kDataLoss)
      << corrupt.status();
  endpoint->reset();  // closes the socket; the child exits
  EXPECT_EQ(WaitPeer(peer->pid), 0);
}

// Timing tests judge what the scheduler lets a spinner see, and a burst of
// load on this shared VM can change that for a moment (the target is
// exclusive, but the machine is not: a CI run saw 9 sleeps where 0 is
// usual). Each runs up to kTimingAttempts attempts, each a fresh sender
// process and endpoint, prints every one, and passes when one shows the
// effect.
constexpr int kTimingAttempts = 3;

// After a large message the receiver spins longer (WaitOptions::
// spin_per_mib): a frame that follows a 2 MiB message by ~500 us, five
// times the 100 us base spin, is caught without sleeping; with the
// extension off the receiver sleeps and needs the doorbell. Counted over 20
// such gaps, so a preempted sender or receiver does not decide an attempt
// (with one core kept busy by another process: 0 vs 20 sleeps, 15 of 15
// runs; with both cores busy the premise goes: the receiver comes late to
// most frames, 0-10 sleeps with the extension off).
constexpr int kSizeSpinGaps = 20;

// Sends kSizeSpinGaps pairs (a 2 MiB message, ~500 us later an empty frame)
// from a child process and counts the empty frames the receiver slept for.
void CountSleepsAfterLargeMessages(bool extended, int* slept) {
  constexpr size_t kLargeBytes = 2 << 20;
  EndpointConfig config;
  config.data_bytes = 16ull << 20;
  config.wait.spin_per_mib =
      extended ? absl::Milliseconds(1) : absl::ZeroDuration();
  auto peer = ForkPeer([&](int sock) {
    auto endpoint = ConnectEndpoint(sock, config, "sender");
    if (!endpoint.ok()) return 1;
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    for (int i = 0; i < kSizeSpinGaps; ++i) {
      absl::StatusOr<Block> block;
      while (!(block = (*endpoint)->Allocate(kLargeBytes, i)).ok()) {
        usleep(50);
      }
      Descriptor large{block->offset,
                       kLargeBytes,
                       kDataType,
                       0,
                       static_cast<uint64_t>(i),
                       0};
      if (!(*endpoint)->Send(large, deadline).ok()) return 2;
      usleep(500);
      if (!(*endpoint)->Send(EmptyFrame(kSummaryType, i), deadline).ok()) {
        return 3;
      }
    }
    return 0;
  });
  ASSERT_TRUE(peer.ok()) << peer.status();
  auto endpoint = ConnectEndpoint(peer->sock, config, "receiver");
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  *slept = 0;
  for (int i = 0; i < kSizeSpinGaps; ++i) {
    auto large = (*endpoint)->Receive(absl::Now() + absl::Seconds(60));
    ASSERT_TRUE(large.ok()) << large.status();
    ASSERT_EQ(large->descriptor.type, kDataType);
    (*endpoint)->Release(*large);
    const uint64_t wakeups_before = (*endpoint)->Stats().wakeups;
    auto small = (*endpoint)->Receive(absl::Now() + absl::Seconds(60));
    ASSERT_TRUE(small.ok()) << small.status();
    ASSERT_EQ(small->descriptor.type, kSummaryType);
    if ((*endpoint)->Stats().wakeups != wakeups_before) ++*slept;
  }
  EXPECT_EQ(WaitPeer(peer->pid), 0);
}

class SizeSpinTest : public ::testing::TestWithParam<bool> {};

TEST_P(SizeSpinTest, FrameShortlyAfterALargeMessageIsCaughtBySpinning) {
  const bool extended = GetParam();
  const int bound = extended ? kSizeSpinGaps / 4 : kSizeSpinGaps / 2;
  for (int attempt = 1; attempt <= kTimingAttempts; ++attempt) {
    int slept = 0;
    ASSERT_NO_FATAL_FAILURE(CountSleepsAfterLargeMessages(extended, &slept));
    std::printf("extension %s, attempt %d: slept before %d of %d frames\n",
                extended ? "on" : "off", attempt, slept, kSizeSpinGaps);
    if (extended ? slept <= bound : slept >= bound) return;
  }
  ADD_FAILURE() << "extension " << (extended ? "on" : "off") << ": no attempt"
                << " slept " << (extended ? "at most " : "at least ") << bound
                << " times";
}

INSTANTIATE_TEST_SUITE_P(OnAndOff, SizeSpinTest, ::testing::Bool());

// While the caller reports more busy streams than WaitOptions::
// max_busy_streams_for_spin, a notify receiver stops spinning once other
// threads take its core (they are the ones working on those streams), and
// spins on while the core stays idle (streams that only wait: long polls).
// Frames 20 ms apart with a 50 ms spin (longer than the busy loop's time
// slices, which a yield hands it): caught spinning unless over the limit
// with a busy loop on the receiver's CPU, where each one needs the
// doorbell. The receiver and the busy loop share one CPU, the sender has
// another. Counted over 20 gaps, as above.
struct BusyCase {
  int busy_streams;
  bool core_taken;  // a busy loop shares the receiver's CPU
  bool spins;       // expected
};

class BusyStreamsTest : public ::testing::TestWithParam<BusyCase> {};

// Pins the calling thread (and threads it starts later) to `cpu`.
bool PinThisThread(int cpu) {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  return sched_setaffinity(0, sizeof(one), &one) == 0;
}

constexpr int kBusyGaps = 20;
constexpr int kBusyLimit = 2;

// Sends kBusyGaps frames 20 ms apart from a child process pinned to one CPU
// to a receiver pinned to another (where a busy loop runs if c.core_taken)
// that reports c.busy_streams, and counts the receiver's sleeps.
void CountSleepsWithBusyStreams(const BusyCase& c, uint64_t* slept) {
  cpu_set_t allowed;
  ASSERT_EQ(sched_getaffinity(0, sizeof(allowed), &allowed), 0);
  std::vector<int> cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE && cpus.size() < 2; ++cpu) {
    if (CPU_ISSET(cpu, &allowed)) cpus.push_back(cpu);
  }
  if (cpus.size() < 2) GTEST_SKIP() << "needs two CPUs";
  struct RestoreAffinity {
    cpu_set_t* allowed;
    ~RestoreAffinity() { sched_setaffinity(0, sizeof(*allowed), allowed); }
  } restore{&allowed};

  EndpointConfig config;
  config.wait.max_spin = absl::Milliseconds(50);
  config.wait.max_busy_streams_for_spin = kBusyLimit;
  auto peer = ForkPeer([&](int sock) {
    if (!PinThisThread(cpus[1])) return 4;
    auto endpoint = ConnectEndpoint(sock, config, "sender");
    if (!endpoint.ok()) return 1;
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    for (int i = 0; i <= kBusyGaps; ++i) {
      usleep(20000);
      if (!(*endpoint)->Send(EmptyFrame(kSummaryType, i), deadline).ok()) {
        return 2;
      }
    }
    return 0;
  });
  ASSERT_TRUE(peer.ok()) << peer.status();
  ASSERT_TRUE(PinThisThread(cpus[0]));
  auto endpoint = ConnectEndpoint(peer->sock, config, "receiver");
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  std::atomic<bool> stop{false};
  std::thread busy_loop;
  if (c.core_taken) {
    busy_loop = std::thread([&] {
      while (!stop.load(std::memory_order_relaxed)) {
      }
    });
  }
  // The first frame ends the handshake's idle time; the gaps come after.
  ASSERT_TRUE((*endpoint)->Receive(absl::Now() + absl::Seconds(60)).ok());
  const uint64_t wakeups_before = (*endpoint)->Stats().wakeups;
  for (int i = 1; i <= kBusyGaps; ++i) {
    auto frame =
        (*endpoint)->Receive(absl::Now() + absl::Seconds(60), c.busy_streams);
    ASSERT_TRUE(frame.ok()) << frame.status();
    ASSERT_EQ(frame->descriptor.tag, static_cast<uint64_t>(i));
  }
  *slept = (*endpoint)->Stats().wakeups - wakeups_before;
  stop = true;
  if (busy_loop.joinable()) busy_loop.join();
  EXPECT_EQ(WaitPeer(peer->pid), 0);
}

TEST_P(BusyStreamsTest, ReceiverStopsSpinningOnlyWhenOverTheLimitAndCoreTaken) {
  const BusyCase c = GetParam();
  // Measured: 0-1 of 20 when it spins, 20 of 20 when it does not. Other
  // load on this shared machine takes turns on the "idle" core too, which
  // ends some spins (6 of 20 beside a compile), so the bounds leave room
  // on both sides of the middle.
  const uint64_t bound = c.spins ? kBusyGaps * 2 / 5 : kBusyGaps * 3 / 5;
  for (int attempt = 1; attempt <= kTimingAttempts; ++attempt) {
    uint64_t slept = 0;
    ASSERT_NO_FATAL_FAILURE(CountSleepsWithBusyStreams(c, &slept));
    if (IsSkipped()) return;
    std::printf(
        "%d busy streams (limit %d), core %s, attempt %d: slept before %lu "
        "of %d\n",
        c.busy_streams, kBusyLimit, c.core_taken ? "taken" : "idle", attempt,
        static_cast<unsigned long>(slept), kBusyGaps);
    if (c.spins ? slept <= bound : slept >= bound) return;
  }
  ADD_FAILURE() << (c.spins ? "expected spinning" : "expected sleeping")
                << ": no attempt slept " << (c.spins ? "at most " : "at least ")
                << bound << " times";
}

INSTANTIATE_TEST_SUITE_P(
    LimitAndCore, BusyStreamsTest,
    ::testing::Values(BusyCase{0, false, true}, BusyCase{2, false, true},
                      BusyCase{3, false, true}, BusyCase{64, false, true},
                      BusyCase{0, true, true}, BusyCase{3, true, false},
                      BusyCase{64, true, false}));

TEST(EndpointTest, PeerKilledMidTrafficIsSeenAndEveryBlockReclaimed) {
  EndpointConfig config;
  config.data_bytes = 4ull << 20;
  config.ring_slots = 256;
  config.wait.strategy = WaitStrategy::kPoll;  // the victim spins, no syscalls
  auto peer = ForkPeer([&](int sock) {
    auto endpoint = ConnectEndpoint(sock, config, "victim");
    if (!endpoint.ok()) return 1;
    // Hold every message (never release): its blocks stay in use.
    for (;;) {
      if (!(*endpoint)->Receive(absl::InfiniteFuture()).ok()) return 2;
    }
  });
  ASSERT_TRUE(peer.ok()) << peer.status();
  config.wait.strategy = WaitStrategy::kNotify;
  auto endpoint = ConnectEndpoint(peer->sock, config, "survivor");
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();

  uint64_t sent = 0;
  absl::Status send_status;
  const absl::Time start = absl::Now();
  for (;;) {
    absl::StatusOr<Block> block = (*endpoint)->Allocate(1000, sent);
    if (!block.ok()) {
      // Arena full of unreleased blocks: the peer holds them all.
      EXPECT_EQ(block.status().code(), absl::StatusCode::kResourceExhausted);
      usleep(1000);
      block = (*endpoint)->Allocate(100, sent);
      if (!block.ok()) break;
    }
    Descriptor d{block->offset, 1000, kDataType, 0, sent, 0};
    send_status = (*endpoint)->Send(d, absl::Now() + absl::Seconds(10));
    if (!send_status.ok()) {
      ASSERT_TRUE((*endpoint)->FreeUnsent(*block).ok());
      break;
    }
    if (++sent == 200) kill(peer->pid, SIGKILL);  // mid-traffic
  }
  ASSERT_GE(sent, 200u);
  EXPECT_EQ(WaitPeer(peer->pid), 128 + SIGKILL);
  // The survivor sees the socket close: receive and send both fail fast.
  auto message = (*endpoint)->Receive(absl::Now() + absl::Seconds(10));
  ASSERT_FALSE(message.ok());
  EXPECT_EQ(message.status().code(), absl::StatusCode::kUnavailable)
      << message.status();
  const Descriptor more = EmptyFrame(kDataType, 0);
  absl::Status status;
  for (int i = 0; i < 1000 && status.ok(); ++i) {
    status = (*endpoint)->Send(more, absl::Now() + absl::Seconds(10));
  }
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_LT(absl::Now() - start, absl::Seconds(15));

  const EndpointStats before = (*endpoint)->Stats();
  EXPECT_GT(before.arena.blocks_in_use, 0u);
  EXPECT_EQ((*endpoint)->ReclaimAll(), before.arena.blocks_in_use);
  const EndpointStats after = (*endpoint)->Stats();
  EXPECT_EQ(after.arena.blocks_in_use, 0u);
  EXPECT_EQ(after.arena.bytes_in_use, 0u);
  std::printf("sent %lu before the kill; reclaimed %lu blocks\n",
              static_cast<unsigned long>(sent),
              static_cast<unsigned long>(before.arena.blocks_in_use));
}

}  // namespace
}  // namespace shmgrpc::shm
