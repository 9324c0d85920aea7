#include "transport/session.h"

#include <sys/socket.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "codec/message_codec.h"
#include "transport/log.h"

namespace shmgrpc::transport {

std::shared_ptr<Session> Session::Start(Handshaken handshaken,
                                        FrameHandler on_frame,
                                        ClosedHandler on_closed) {
  std::shared_ptr<Session> session(new Session(
      std::move(handshaken), std::move(on_frame), std::move(on_closed)));
  // The thread keeps the session alive until it has left Run(); owners stop
  // it with Shutdown().
  session->thread_ = std::thread([self = session] { self->Run(); });
  return session;
}

Session::Session(Handshaken handshaken, FrameHandler on_frame,
                 ClosedHandler on_closed)
    : endpoint_(std::move(handshaken.endpoint)),
      peer_(handshaken.peer),
      on_frame_(std::move(on_frame)),
      on_closed_(std::move(on_closed)) {}

Session::~Session() {
  Shutdown();
  if (thread_.joinable()) thread_.detach();  // only when destroyed on it
}

void Session::Shutdown() {
  if (!shutdown_.exchange(true)) {
    ::shutdown(endpoint_->socket(), SHUT_RDWR);
  }
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) {
    thread_.join();
  }
}

void Session::Run() {
  absl::Status closed;
  for (;;) {
    absl::StatusOr<shm::ReceivedMessage> message =
        endpoint_->Receive(absl::InfiniteFuture());
    if (!message.ok()) {
      if (message.status().code() == absl::StatusCode::kInvalidArgument) {
        ShmLog("session with pid ", peer_.pid,
               ": dropped a hostile descriptor: ", message.status().message());
        continue;
      }
      closed = message.status();
      break;
    }
    if (!codec::IsKnownFrameType(message->descriptor.type)) {
      ShmLog("session with pid ", peer_.pid, ": unknown frame type ",
             message->descriptor.type);
      endpoint_->Release(*message);
      continue;
    }
    on_frame_(*message);
  }
  alive_.store(false, std::memory_order_release);
  // Let the peer see the end too (a protocol error ends only this side's
  // loop otherwise), then take back every block the peer still held.
  ::shutdown(endpoint_->socket(), SHUT_RDWR);
  blocks_reclaimed_.store(endpoint_->ReclaimAll(), std::memory_order_release);
  on_closed_(closed);
}

size_t Session::max_payload_bytes() const {
  return endpoint_->max_payload_bytes();
}

template <typename Fill>
absl::Status Session::SendFilled(codec::FrameType type, uint64_t stream,
                                 size_t size, absl::Time deadline,
                                 uint16_t flags, Fill fill) {
  if (!alive()) return absl::UnavailableError("shm session is closed");
  shm::Descriptor descriptor{shm::kNoPayload, 0,
                             static_cast<uint16_t>(type), flags, stream, 0};
  if (size == 0) return endpoint_->Send(descriptor, deadline);
  absl::StatusOr<shm::Block> block = endpoint_->Allocate(size, stream);
  if (block.ok()) {
    if (absl::Status filled = fill(block->data); !filled.ok()) {
      endpoint_->FreeUnsent(*block).IgnoreError();
      return filled;
    }
    descriptor.offset = block->offset;
    descriptor.length = static_cast<uint32_t>(size);
    absl::Status sent = endpoint_->Send(descriptor, deadline);
    if (!sent.ok()) endpoint_->FreeUnsent(*block).IgnoreError();
    return sent;
  }
  if (block.status().code() != absl::StatusCode::kResourceExhausted) {
    return block.status();
  }
  // No shared memory for it: the bytes take the socket, the descriptor keeps
  // its place in the ring.
  (size > endpoint_->max_payload_bytes() ? inline_too_large_
                                         : inline_arena_full_)
      .fetch_add(1, std::memory_order_relaxed);
  std::string heap(size, '\0');
  if (absl::Status filled = fill(reinterpret_cast<uint8_t*>(heap.data()));
      !filled.ok()) {
    return filled;
  }
  return endpoint_->SendInline(descriptor, std::move(heap), deadline);
}

absl::Status Session::SendCredit(uint64_t stream, uint64_t credit_aux,
                                 absl::Time deadline) {
  if (!alive()) return absl::UnavailableError("shm session is closed");
  const shm::Descriptor descriptor{
      shm::kNoPayload, 0,
      static_cast<uint16_t>(codec::FrameType::kWindowUpdate), 0, stream,
      credit_aux};
  return endpoint_->Send(descriptor, deadline);
}

InlineStats Session::inline_stats() const {
  InlineStats stats;
  stats.arena_full = inline_arena_full_.load(std::memory_order_relaxed);
  stats.too_large = inline_too_large_.load(std::memory_order_relaxed);
  return stats;
}

bool Session::LikelyFits(size_t bytes) {
  if (bytes > endpoint_->max_payload_bytes()) return false;
  // One block header of slack; a large block also needs a contiguous run.
  return endpoint_->FreeBytes() >= bytes + 64;
}

absl::Status Session::SendMessage(uint64_t stream,
                                  const google::protobuf::MessageLite& message,
                                  size_t size, absl::Time deadline) {
  return SendFilled(codec::FrameType::kMessage, stream, size, deadline, 0,
                    [&](uint8_t* out) {
                      codec::SerializeInto(message, size, out);
                      return absl::OkStatus();
                    });
}

absl::Status Session::SendByteBuffer(uint64_t stream,
                                     const grpc::ByteBuffer& buffer,
                                     absl::Time deadline) {
  return SendFilled(codec::FrameType::kMessage, stream, buffer.Length(),
                    deadline, 0, [&](uint8_t* out) {
                      return codec::CopyByteBuffer(buffer, out);
                    });
}

absl::Status Session::SendFrame(codec::FrameType type, uint64_t stream,
                                absl::string_view bytes, absl::Time deadline,
                                uint16_t flags) {
  return SendFilled(type, stream, bytes.size(), deadline, flags,
                    [&](uint8_t* out) {
    std::memcpy(out, bytes.data(), bytes.size());
    return absl::OkStatus();
  });
}

}  // namespace shmgrpc::transport
