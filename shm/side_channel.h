// SideChannel: the byte stream a session's unix socket carries next to the
// shared-memory rings, after the handshake.
//
// Wire format, one token after another, each direction independent:
//   0x01                          doorbell (wake up, look at the ring)
//   0x02 len:u32le bytes[len]     inline record: the payload of the next
//                                 ring descriptor flagged kInlinePayloadFlag
// Any other byte, or a record longer than `max_record_bytes`, is DataLoss:
// the stream cannot be resynchronised, so the connection is done.
//
// Why records ride here: when no shared memory is free (or a message is
// larger than the whole arena) the payload still has to arrive in order with
// the rest of its stream. The descriptor keeps its place in the ring and only
// its bytes take the socket, so ordering is the ring's. The sender publishes
// the descriptor first and then queues the record: a reader that finds the
// descriptor can always wait for its bytes.
//
// Records are written by a writer thread (started on the first record), not
// by the thread that sends: a record larger than the socket buffer can only
// be written while the peer's reader reads, and a sender blocked on that
// while holding its endpoint's send lock could deadlock two sessions' reader
// threads against each other (each reader may need the send lock to send a
// credit or a status). A doorbell is never written into the middle of a
// record; one rung while a record is being written is replaced by the
// record's own bytes or written right after it, so no wake-up is lost.
//
// Threading: Ring() and QueueRecord() may be called from any thread; a
// caller that needs records in a given order serializes its calls (the
// endpoint does, under its send lock). Wait(), TakeRecord() and CheckPeer()
// are for the one receiving thread. The socket is never made blocking; every
// wait is a poll().
#ifndef SHMGRPC_SHM_SIDE_CHANNEL_H_
#define SHMGRPC_SHM_SIDE_CHANNEL_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "shm/thread.h"

namespace shmgrpc::shm {

// Largest inline payload an endpoint accepts unless told otherwise.
inline constexpr size_t kDefaultMaxInlineBytes = size_t{64} << 20;

// What a connection's inline records may take.
struct InlineLimits {
  // Largest record accepted, either way.
  size_t max_record_bytes = kDefaultMaxInlineBytes;
  // The writer gives up, and shuts the socket down (the stream is then
  // mid-record and cannot be resumed), when the peer reads nothing of a
  // record for this long (a stopped process, not a slow one).
  absl::Duration stall_timeout = absl::Seconds(10);
  // Queued records not yet written take heap until the peer reads them:
  // beyond this many bytes a sender waits for room (WaitForRoom), as it
  // waits for a ring slot, so a peer that stops reading cannot make the
  // queue grow without end. A record always fits an empty queue.
  size_t max_queued_bytes = size_t{64} << 20;
};

class SideChannel {
 public:
  SideChannel(int sock, const InlineLimits& limits)
      : sock_(sock), limits_(limits) {}
  SideChannel(const SideChannel&) = delete;
  SideChannel& operator=(const SideChannel&) = delete;
  // Stops the writer (see StopWriter).
  ~SideChannel() { StopWriter(); }
  // Stops and joins the writer; records not yet written are dropped (the
  // connection is being torn down). Call before closing the socket.
  // Idempotent.
  void StopWriter();

  // Sends a doorbell byte without blocking. A full socket buffer means the
  // peer has unread bytes already, which wakes it as well as a doorbell.
  absl::Status Ring();
  // Waits until a record of `bytes` fits the queue (InlineLimits::
  // max_queued_bytes), or until `deadline` (DeadlineExceeded). Unavailable
  // once the writer has failed or stopped.
  absl::Status WaitForRoom(size_t bytes, absl::Time deadline);
  // Queues one record for the writer; never blocks (a caller that keeps to
  // the queue's limit calls WaitForRoom first). Unavailable once the writer
  // has failed (peer gone, stalled); InvalidArgument over the limit;
  // ResourceExhausted when the writer thread (started with the first
  // record) cannot start.
  absl::Status QueueRecord(std::string bytes);
  // Sends that waited in WaitForRoom (or gave up there), and the most bytes
  // ever queued at once.
  uint64_t queue_waits();
  uint64_t queued_bytes_peak();

  // Blocks until bytes arrive, the peer hangs up or `timeout` passes, then
  // parses what came. OK on wake-up or timeout; Unavailable when the peer is
  // gone; DataLoss on garbage.
  absl::Status Wait(absl::Duration timeout);
  // The next inline record, which must be `expected_bytes` long. Blocks until
  // it has fully arrived or the connection ends (Shutdown of the socket ends
  // the wait).
  absl::StatusOr<std::shared_ptr<const std::string>> TakeRecord(
      size_t expected_bytes);
  // Unavailable when the peer has closed its end; never blocks.
  absl::Status CheckPeer();

 private:
  // One non-blocking read, parsed. Unavailable on EOF.
  absl::Status ReadAvailable();
  absl::Status Parse(const uint8_t* data, size_t len);
  void WriterLoop();
  // Writes one whole record (writer thread, without write_mu_).
  absl::Status WriteRecord(const std::string& bytes);
  // One doorbell byte, non-blocking (write_mu_ held, no record in flight).
  absl::Status WriteDoorbellLocked();

  const int sock_;
  const InlineLimits limits_;

  // Sender-side state.
  std::mutex write_mu_;
  std::condition_variable outbox_ready_;
  std::condition_variable outbox_drained_;  // a record written, or the end
  std::deque<std::string> outbox_;          // guarded by write_mu_
  size_t queued_bytes_ = 0;                 // in outbox_ and in flight
  size_t queued_bytes_peak_ = 0;
  uint64_t queue_waits_ = 0;
  bool record_in_flight_ = false;  // writer is writing without the lock
  bool doorbell_pending_ = false;  // rung during a record
  // Why the writer gave up, once it has (it then shut the socket down,
  // which reads as the peer's hang-up): further records are refused, and a
  // closed connection reports this instead of "peer closed the connection".
  absl::Status writer_error_;
  bool stopping_ = false;
  Thread writer_;  // started with the first record

  // Receiver-side parser state.
  enum class ParseState { kToken, kLength, kBody };
  ParseState state_ = ParseState::kToken;
  uint8_t length_bytes_[4] = {};
  size_t length_have_ = 0;
  std::shared_ptr<std::string> partial_;
  size_t body_have_ = 0;
  std::deque<std::shared_ptr<const std::string>> records_;
  size_t buffered_bytes_ = 0;  // in records_, bounded by 2 records' worth
  // The first read error (EOF, garbage), returned by every later read: the
  // stream cannot be resynchronised, and the caller may have missed it.
  absl::Status read_error_;

  // The error for a connection found closed: the writer's, if it closed it.
  absl::Status ClosedError();
  absl::Status ClosedErrorLocked();  // write_mu_ held
};

}  // namespace shmgrpc::shm

#endif  // SHMGRPC_SHM_SIDE_CHANNEL_H_
