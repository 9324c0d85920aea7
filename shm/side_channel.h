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
// the descriptor first and then writes the record: a record larger than the
// socket buffer cannot be written before someone reads it, and a reader that
// finds the descriptor can always wait for its bytes.
//
// Threading: Ring() and SendRecord() are for the sending side and must be
// serialized by the caller (the endpoint's send lock), so tokens never
// interleave. Wait(), TakeRecord() and CheckPeer() are for the one receiving
// thread. The socket is never made blocking; every wait is a poll().
#ifndef SHMGRPC_SHM_SIDE_CHANNEL_H_
#define SHMGRPC_SHM_SIDE_CHANNEL_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace shmgrpc::shm {

class SideChannel {
 public:
  SideChannel(int sock, size_t max_record_bytes)
      : sock_(sock), max_record_bytes_(max_record_bytes) {}
  SideChannel(const SideChannel&) = delete;
  SideChannel& operator=(const SideChannel&) = delete;

  // Sends a doorbell byte without blocking. A full socket buffer means the
  // peer has unread bytes already, which wakes it as well as a doorbell.
  absl::Status Ring();
  // Writes one record. Blocks while the socket buffer is full; gives up with
  // DeadlineExceeded when the peer reads nothing for `stall_timeout` (the
  // stream is then mid-record, so the caller must close the connection).
  absl::Status SendRecord(const void* data, size_t len,
                          absl::Duration stall_timeout);

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

  const int sock_;
  const size_t max_record_bytes_;

  // Receiver-side parser state.
  enum class ParseState { kToken, kLength, kBody };
  ParseState state_ = ParseState::kToken;
  uint8_t length_bytes_[4] = {};
  size_t length_have_ = 0;
  std::shared_ptr<std::string> partial_;
  size_t body_have_ = 0;
  std::deque<std::shared_ptr<const std::string>> records_;
  size_t buffered_bytes_ = 0;  // in records_, bounded by 2 records' worth
};

}  // namespace shmgrpc::shm

#endif  // SHMGRPC_SHM_SIDE_CHANNEL_H_
