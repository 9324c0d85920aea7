// InboundMessage: one received gRPC message — a single kMessage frame, or the
// frames of a message chained over several blocks (all flagged
// kMessageContinuesFlag but the last). MessageAssembler turns a stream's
// frames into messages.
//
// Ownership: an InboundMessage owns its frames; whoever holds it gives them
// back with Session::Release(const InboundMessage&).
// Thread-safety: none; callers serialize (the calls keep these under their
// own locks).
#ifndef SHMGRPC_TRANSPORT_INBOUND_MESSAGE_H_
#define SHMGRPC_TRANSPORT_INBOUND_MESSAGE_H_

#include <cstddef>
#include <optional>

#include "absl/container/inlined_vector.h"
#include "codec/message_codec.h"
#include "shm/endpoint.h"

namespace shmgrpc::transport {

struct InboundMessage {
  absl::InlinedVector<shm::ReceivedMessage, 1> frames;
  size_t bytes = 0;  // all frames' payloads together

  // The payload, chunk by chunk, for parsing in place.
  absl::InlinedVector<codec::InChunk, 1> Chunks() const;
  // Its sender's window was full with it (codec::kWindowFullFlag).
  bool SenderWaits() const;
};

class MessageAssembler {
 public:
  // Takes ownership of a kMessage `frame`; returns the message it completes.
  std::optional<InboundMessage> Add(const shm::ReceivedMessage& frame);
  // Bytes of the message still being assembled.
  size_t pending_bytes() const { return pending_.bytes; }
  // Hands over the frames of an unfinished message (e.g. to release them
  // when the call ends).
  InboundMessage TakePending();

 private:
  InboundMessage pending_;
};

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_INBOUND_MESSAGE_H_
