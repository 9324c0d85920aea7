#include "transport/inbound_message.h"

#include <utility>

#include "codec/frame_type.h"

namespace shmgrpc::transport {

absl::InlinedVector<codec::InChunk, 1> InboundMessage::Chunks() const {
  absl::InlinedVector<codec::InChunk, 1> chunks;
  for (const shm::ReceivedMessage& frame : frames) {
    chunks.push_back({frame.data, frame.descriptor.length});
  }
  return chunks;
}

bool InboundMessage::SenderWaits() const {
  return !frames.empty() &&
         (frames.back().descriptor.flags & codec::kWindowFullFlag) != 0;
}

std::optional<InboundMessage> MessageAssembler::Add(
    const shm::ReceivedMessage& frame) {
  pending_.frames.push_back(frame);
  pending_.bytes += frame.descriptor.length;
  if ((frame.descriptor.flags & codec::kMessageContinuesFlag) != 0) {
    return std::nullopt;
  }
  return TakePending();
}

InboundMessage MessageAssembler::TakePending() {
  return std::exchange(pending_, InboundMessage{});
}

}  // namespace shmgrpc::transport
