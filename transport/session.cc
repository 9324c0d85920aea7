#include "transport/session.h"

#include <sys/random.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "codec/message_codec.h"
#include "grpc/slice.h"
#include "transport/log.h"

namespace shmgrpc::transport {
namespace {

constexpr char kThreadName[] = "shm-session";

// 0 when the kernel gives no randomness: such a session makes no arena
// replies (arena_replies.h never matches token 0).
uint64_t RandomToken() {
  uint64_t token = 0;
  ssize_t got;
  do {
    got = getrandom(&token, sizeof(token), 0);
  } while (got < 0 && errno == EINTR);
  return got == static_cast<ssize_t>(sizeof(token)) ? token : 0;
}

// What an arena slice's gRPC refcount carries: its session (kept alive, so
// the payload stays mapped as long as gRPC may read it) and its payload.
struct ArenaSliceOwner {
  std::shared_ptr<Session> session;
  const uint8_t* data;
};

}  // namespace

std::shared_ptr<Session> Session::Create(Handshaken handshaken,
                                         FrameHandler on_frame,
                                         ClosedHandler on_closed,
                                         size_t max_block_bytes,
                                         absl::Duration stalled_peer_timeout) {
  return std::shared_ptr<Session>(
      new Session(std::move(handshaken), std::move(on_frame),
                  std::move(on_closed), max_block_bytes, stalled_peer_timeout));
}

absl::Status Session::Start() {
  // The thread keeps the session alive until it has left Run(); owners stop
  // it with Shutdown().
  absl::StatusOr<shm::Thread> thread = shm::Thread::Start(
      kThreadName, [self = shared_from_this()] { self->Run(); });
  if (!thread.ok()) return thread.status();
  thread_ = *std::move(thread);
  return absl::OkStatus();
}

void Session::Start(shm::ReservedThread thread) {
  thread_ =
      thread.Run(kThreadName, [self = shared_from_this()] { self->Run(); });
}

Session::Session(Handshaken handshaken, FrameHandler on_frame,
                 ClosedHandler on_closed, size_t max_block_bytes,
                 absl::Duration stalled_peer_timeout)
    : endpoint_(std::move(handshaken.endpoint)),
      peer_(handshaken.peer),
      peer_stream_window_(handshaken.peer_stream_window),
      stream_slots_(handshaken.max_concurrent_streams),
      on_frame_(std::move(on_frame)),
      on_closed_(std::move(on_closed)),
      token_(RandomToken()),
      max_block_bytes_(max_block_bytes),
      stalled_peer_timeout_(stalled_peer_timeout),
      capacity_bytes_(endpoint_->max_payload_bytes()) {}

Session::~Session() {
  Shutdown();
  if (thread_.joinable()) thread_.detach();  // only when destroyed on it
}

void Session::Close() {
  if (!shutdown_.exchange(true)) {
    ::shutdown(endpoint_->socket(), SHUT_RDWR);
  }
}

void Session::CloseFor(absl::Status why) {
  {
    std::lock_guard<std::mutex> lock(close_reason_mu_);
    if (close_reason_.ok() && !shutdown_.load()) close_reason_ = std::move(why);
  }
  Close();
}

void Session::Shutdown() {
  Close();
  if (thread_.joinable() && !thread_.IsCurrent()) thread_.join();
}

void Session::LogPeerError(const std::string& kind, absl::string_view what) {
  uint64_t not_logged;
  if (protocol_errors_log_.ShouldLog(kind, absl::Now(), &not_logged)) {
    ShmLog("session with pid ", peer_.pid, ": ", what,
           LogRateLimiter::NotLoggedNote(not_logged));
  }
}

void Session::Run() {
  absl::Status closed;
  for (;;) {
    absl::StatusOr<shm::ReceivedMessage> message = endpoint_->Receive(
        absl::InfiniteFuture(), busy_streams_.load(std::memory_order_relaxed));
    if (!message.ok()) {
      if (message.status().code() == absl::StatusCode::kInvalidArgument) {
        LogPeerError("descriptor",
                     absl::StrCat("dropped a hostile descriptor: ",
                                  message.status().message()));
        continue;
      }
      closed = message.status();
      break;
    }
    if (!codec::IsKnownFrameType(message->descriptor.type)) {
      LogPeerError("frame type", absl::StrCat("unknown frame type ",
                                              message->descriptor.type));
      endpoint_->Release(*message);
      continue;
    }
    on_frame_(*message);
  }
  {
    std::lock_guard<std::mutex> lock(close_reason_mu_);
    if (!close_reason_.ok()) closed = close_reason_;
  }
  alive_.store(false, std::memory_order_release);
  // Let the peer see the end too (a protocol error ends only this side's
  // loop otherwise), then take back every block the peer still held.
  ::shutdown(endpoint_->socket(), SHUT_RDWR);
  {
    std::lock_guard<std::mutex> lock(arena_slices_mu_);
    arena_reclaimed_ = true;
    unsent_arena_slices_.clear();
    unsent_arena_slice_count_.store(0, std::memory_order_relaxed);
    blocks_reclaimed_.store(endpoint_->ReclaimAll(), std::memory_order_release);
  }
  on_closed_(closed);
}

namespace {

// Payload bytes per block of a chain: one 64 KiB page of the allocator minus
// its block header, so chains use fragmented space page by page.
constexpr size_t kChainChunkBytes = shm::kDataPageBytes - 32;

}  // namespace

template <typename Fill>
absl::Status Session::SendFilled(codec::FrameType type, uint64_t stream,
                                 size_t size, absl::Time deadline,
                                 uint16_t flags, uint64_t aux, Fill fill) {
  if (!alive()) return absl::UnavailableError("shm session is closed");
  shm::Descriptor descriptor{
      shm::kNoPayload, 0, static_cast<uint16_t>(type), flags, stream, aux};
  if (size == 0) return endpoint_->Send(descriptor, deadline);
  const bool may_chain = type == codec::FrameType::kMessage;
  if (!may_chain || max_block_bytes_ == 0 || size <= max_block_bytes_) {
    absl::StatusOr<shm::Block> block = endpoint_->Allocate(size, stream);
    if (block.ok()) {
      const codec::OutChunk chunk{block->data, size};
      if (absl::Status filled = fill(absl::MakeConstSpan(&chunk, 1));
          !filled.ok()) {
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
  }
  if (may_chain && size <= capacity_bytes_) {
    absl::Status sent;
    if (TrySendChained(descriptor, size, deadline, fill, &sent)) return sent;
  }
  // No shared memory for it: the bytes take the socket, the descriptor keeps
  // its place in the ring.
  (size > capacity_bytes_ ? inline_too_large_ : inline_arena_full_)
      .fetch_add(1, std::memory_order_relaxed);
  std::string heap(size, '\0');
  const codec::OutChunk chunk{reinterpret_cast<uint8_t*>(heap.data()), size};
  if (absl::Status filled = fill(absl::MakeConstSpan(&chunk, 1));
      !filled.ok()) {
    return filled;
  }
  return endpoint_->SendInline(descriptor, std::move(heap), deadline);
}

template <typename Fill>
bool Session::TrySendChained(shm::Descriptor descriptor, size_t size,
                             absl::Time deadline, Fill& fill,
                             absl::Status* status) {
  const size_t chunk_bytes = max_block_bytes_ == 0
                                 ? kChainChunkBytes
                                 : std::min(max_block_bytes_, kChainChunkBytes);
  std::vector<shm::Block> blocks;
  std::vector<codec::OutChunk> chunks;
  for (size_t left = size; left > 0;) {
    const size_t n = std::min(left, chunk_bytes);
    absl::StatusOr<shm::Block> block = endpoint_->Allocate(n, descriptor.tag);
    if (!block.ok()) {
      for (const shm::Block& b : blocks) endpoint_->FreeUnsent(b).IgnoreError();
      return false;
    }
    blocks.push_back(*block);
    chunks.push_back({block->data, n});
    left -= n;
  }
  auto free_from = [&](size_t first) {
    for (size_t i = first; i < blocks.size(); ++i) {
      endpoint_->FreeUnsent(blocks[i]).IgnoreError();
    }
  };
  if (absl::Status filled = fill(absl::MakeConstSpan(chunks)); !filled.ok()) {
    free_from(0);
    *status = filled;
    return true;
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    shm::Descriptor part = descriptor;
    part.offset = blocks[i].offset;
    part.length = static_cast<uint32_t>(chunks[i].size);
    if (i + 1 < blocks.size()) part.flags |= codec::kMessageContinuesFlag;
    if (absl::Status sent = endpoint_->Send(part, deadline); !sent.ok()) {
      // Sent chunks are the peer's now; it drops the partial message when
      // the call ends, which this failure makes happen.
      free_from(i);
      *status = sent;
      return true;
    }
  }
  chained_.fetch_add(1, std::memory_order_relaxed);
  *status = absl::OkStatus();
  return true;
}

namespace {

shm::Descriptor ControlFrame(codec::FrameType type, uint64_t stream,
                             uint64_t aux) {
  return {shm::kNoPayload, 0, static_cast<uint16_t>(type), 0, stream, aux};
}

}  // namespace

absl::Status Session::SendControl(codec::FrameType type, uint64_t stream,
                                  uint64_t aux, absl::Time deadline) {
  if (!alive()) return absl::UnavailableError("shm session is closed");
  return endpoint_->Send(ControlFrame(type, stream, aux), deadline);
}

void Session::PostControl(codec::FrameType type, uint64_t stream, uint64_t aux,
                          absl::Time deadline, StreamSlot slot) {
  Post({ControlFrame(type, stream, aux), std::nullopt, deadline,
        std::move(slot), /*close_if_unsent=*/false});
}

void Session::PostFrame(codec::FrameType type, uint64_t stream,
                        absl::string_view bytes, StreamSlot slot) {
  const absl::Time deadline = absl::Now() + stalled_peer_timeout_;
  if (!alive()) return;
  shm::Descriptor frame = ControlFrame(type, stream, 0);
  std::optional<shm::Block> block;
  if (!bytes.empty()) {
    absl::StatusOr<shm::Block> allocated =
        endpoint_->Allocate(bytes.size(), stream);
    if (!allocated.ok()) {
      CloseFor(absl::ResourceExhaustedError(
          absl::StrCat("no shared memory for a frame its peer must "
                       "not miss (stream ",
                       stream, "): ", allocated.status().message())));
      return;
    }
    std::memcpy(allocated->data, bytes.data(), bytes.size());
    frame.offset = allocated->offset;
    frame.length = static_cast<uint32_t>(bytes.size());
    block = *allocated;
  }
  Post({frame, block, deadline, std::move(slot), /*close_if_unsent=*/true});
}

void Session::Post(PostedFrame posted) {
  if (!alive()) {
    if (posted.block) endpoint_->FreeUnsent(*posted.block).IgnoreError();
    return;
  }
  std::lock_guard<std::mutex> lock(posted_mu_);
  if (posted_.empty()) {
    const absl::Status sent = endpoint_->TrySend(posted.frame);
    if (sent.code() != absl::StatusCode::kResourceExhausted) {
      // Sent, or the session is gone (`slot` is returned either way).
      if (!sent.ok() && posted.block) {
        endpoint_->FreeUnsent(*posted.block).IgnoreError();
      }
      return;
    }
  }
  posted_.push_back(std::move(posted));
  if (poster_running_) return;  // it sends this too
  absl::StatusOr<shm::Thread> poster =
      shm::Thread::Start("shm-poster", [self = shared_from_this()] {
        for (;;) {
          PostedFrame next;
          {
            std::lock_guard<std::mutex> lock(self->posted_mu_);
            if (self->posted_.empty()) {
              self->poster_running_ = false;
              return;
            }
            next = std::move(self->posted_.front());
            self->posted_.pop_front();
          }
          // Not Send: waiting for room there holds the ring's send lock,
          // and with it the session's other senders, however short their
          // deadlines, for as long as this frame's (stalled_peer_timeout for
          // a status or a cancel, none for some credits).
          const absl::Status sent =
              self->endpoint_->SendYielding(next.frame, next.deadline);
          if (sent.ok()) continue;
          if (next.block) {
            self->endpoint_->FreeUnsent(*next.block).IgnoreError();
          }
          // A session closing (by an earlier frame's timeout, say) ends
          // every call anyway: nothing more to say about this one.
          if (!self->alive() || self->shutdown_.load()) continue;
          // Not sent while the session goes on: the peer may count the
          // stream forever, so this side does too.
          next.slot.Abandon();
          if (next.close_if_unsent) {
            self->CloseFor(absl::Status(
                sent.code(),
                absl::StrCat("a frame its peer must not miss (stream ",
                             next.frame.tag,
                             ") was not sent: ", sent.message())));
          }
        }
      });
  if (poster.ok()) {
    poster_running_ = true;
    poster->detach();
    return;
  }
  for (const PostedFrame& dropped : posted_) {
    if (dropped.block) endpoint_->FreeUnsent(*dropped.block).IgnoreError();
  }
  posted_.clear();
  CloseFor(absl::ResourceExhaustedError(absl::StrCat(
      "no thread to send a control frame from: ", poster.status().message())));
}

SendPathStats Session::send_path_stats() const {
  SendPathStats stats;
  stats.chained = chained_.load(std::memory_order_relaxed);
  stats.inline_arena_full = inline_arena_full_.load(std::memory_order_relaxed);
  stats.inline_too_large = inline_too_large_.load(std::memory_order_relaxed);
  stats.arena_slices = arena_slices_sent_.load(std::memory_order_relaxed);
  stats.replies_deferred = replies_deferred_.load(std::memory_order_relaxed);
  return stats;
}

bool Session::LikelyFits(size_t bytes) {
  if (bytes > capacity_bytes_) return false;
  // A block header per chain chunk (a single block needs one), plus one.
  const size_t headers = (bytes / kChainChunkBytes + 2) * 32;
  return endpoint_->FreeBytes() >= bytes + headers;
}

absl::Status Session::SendMessage(uint64_t stream,
                                  const google::protobuf::MessageLite& message,
                                  size_t size, absl::Time deadline,
                                  uint16_t flags) {
  return SendFilled(codec::FrameType::kMessage, stream, size, deadline, flags,
                    /*aux=*/0, [&](absl::Span<const codec::OutChunk> chunks) {
                      codec::SerializeInto(message, chunks);
                      return absl::OkStatus();
                    });
}

absl::Status Session::CountingArenaSlices(
    uint64_t arena_slices, absl::FunctionRef<absl::Status()> send) {
  // Counted before the peer can see them (a test reads the count once its
  // call is done), taken back if they do not go.
  arena_slices_sent_.fetch_add(arena_slices, std::memory_order_relaxed);
  absl::Status sent = send();
  if (!sent.ok()) {
    arena_slices_sent_.fetch_sub(arena_slices, std::memory_order_relaxed);
  }
  return sent;
}

absl::Status Session::SendByteBuffer(uint64_t stream,
                                     const grpc::ByteBuffer& buffer,
                                     absl::Time deadline, uint16_t flags) {
  if (std::optional<shm::Block> block = TakeArenaSlice(buffer)) {
    const shm::Descriptor descriptor{
        block->offset,
        static_cast<uint32_t>(buffer.Length()),
        static_cast<uint16_t>(codec::FrameType::kMessage),
        flags,
        stream,
        0};
    absl::Status sent = CountingArenaSlices(
        1, [&] { return endpoint_->Send(descriptor, deadline); });
    if (!sent.ok()) {
      std::lock_guard<std::mutex> lock(arena_slices_mu_);
      if (!arena_reclaimed_) endpoint_->FreeUnsent(*block).IgnoreError();
    }
    return sent;
  }
  return SendFilled(codec::FrameType::kMessage, stream, buffer.Length(),
                    deadline, flags, /*aux=*/0,
                    [&](absl::Span<const codec::OutChunk> chunks) {
                      return codec::CopyByteBuffer(buffer, chunks);
                    });
}

std::optional<PreparedFrame> Session::PrepareFrame(codec::FrameType type,
                                                  uint64_t stream,
                                                  absl::string_view bytes) {
  if (!alive()) return std::nullopt;
  PreparedFrame frame;
  frame.descriptor = ControlFrame(type, stream, 0);
  if (bytes.empty()) return frame;
  absl::StatusOr<shm::Block> block = endpoint_->Allocate(bytes.size(), stream);
  if (!block.ok()) return std::nullopt;
  std::memcpy(block->data, bytes.data(), bytes.size());
  frame.descriptor.offset = block->offset;
  frame.descriptor.length = static_cast<uint32_t>(bytes.size());
  frame.block = *block;
  return frame;
}

std::optional<PreparedFrame> Session::PrepareByteBuffer(
    uint64_t stream, const grpc::ByteBuffer& buffer) {
  if (!alive()) return std::nullopt;
  PreparedFrame frame;
  frame.descriptor = ControlFrame(codec::FrameType::kMessage, stream, 0);
  const size_t size = buffer.Length();
  if (size == 0) return frame;
  if (std::optional<shm::Block> slice = TakeArenaSlice(buffer)) {
    frame.block = *slice;
    frame.arena_slice = true;
  } else {
    if (max_block_bytes_ != 0 && size > max_block_bytes_) return std::nullopt;
    absl::StatusOr<shm::Block> block = endpoint_->Allocate(size, stream);
    if (!block.ok()) return std::nullopt;
    const codec::OutChunk chunk{block->data, size};
    if (!codec::CopyByteBuffer(buffer, absl::MakeConstSpan(&chunk, 1)).ok()) {
      endpoint_->FreeUnsent(*block).IgnoreError();
      return std::nullopt;
    }
    frame.block = *block;
  }
  frame.descriptor.offset = frame.block->offset;
  frame.descriptor.length = static_cast<uint32_t>(size);
  return frame;
}

absl::Status Session::TrySendPrepared(absl::Span<const PreparedFrame> frames) {
  if (!alive()) return absl::UnavailableError("shm session is closed");
  absl::InlinedVector<shm::Descriptor, 4> descriptors;
  uint64_t arena_slices = 0;
  for (const PreparedFrame& frame : frames) {
    descriptors.push_back(frame.descriptor);
    arena_slices += frame.arena_slice ? 1 : 0;
  }
  return CountingArenaSlices(
      arena_slices, [&] { return endpoint_->TrySendAll(descriptors); });
}

absl::Status Session::SendPrepared(const PreparedFrame& frame,
                                   absl::Time deadline) {
  if (!alive()) return absl::UnavailableError("shm session is closed");
  return CountingArenaSlices(frame.arena_slice ? 1 : 0, [&] {
    return endpoint_->Send(frame.descriptor, deadline);
  });
}

void Session::FreePrepared(const PreparedFrame& frame) {
  if (!frame.block) return;
  if (frame.arena_slice) {
    std::lock_guard<std::mutex> lock(arena_slices_mu_);
    if (arena_reclaimed_) return;  // freed with the rest of the arena
  }
  endpoint_->FreeUnsent(*frame.block).IgnoreError();
}

absl::StatusOr<grpc::Slice> Session::WriteArenaSlice(
    uint64_t stream, size_t size, absl::FunctionRef<void(uint8_t*)> fill) {
  if (size == 0 || (max_block_bytes_ != 0 && size > max_block_bytes_)) {
    return absl::ResourceExhaustedError("not for one block");
  }
  shm::Block block;
  ArenaSliceOwner* owner;
  {
    std::lock_guard<std::mutex> lock(arena_slices_mu_);
    if (arena_reclaimed_ || !alive()) {
      return absl::ResourceExhaustedError("shm session is closed");
    }
    absl::StatusOr<shm::Block> allocated = endpoint_->Allocate(size, stream);
    if (!allocated.ok()) return allocated.status();
    block = *allocated;
    owner = new ArenaSliceOwner{shared_from_this(), block.data};
    unsent_arena_slices_.emplace(block.data, UnsentArenaSlice{block, owner});
    unsent_arena_slice_count_.fetch_add(1, std::memory_order_relaxed);
  }
  fill(block.data);
  return grpc::Slice(grpc_slice_new_with_user_data(block.data, size,
                                                   &DestroyArenaSlice, owner),
                     grpc::Slice::STEAL_REF);
}

std::optional<shm::Block> Session::TakeArenaSlice(
    const grpc::ByteBuffer& buffer) {
  if (unsent_arena_slice_count_.load(std::memory_order_relaxed) == 0) {
    return std::nullopt;
  }
  grpc::Slice slice;
  if (!buffer.TrySingleSlice(&slice).ok()) return std::nullopt;
  std::lock_guard<std::mutex> lock(arena_slices_mu_);
  auto it = unsent_arena_slices_.find(slice.begin());
  // The whole block's payload, not a part of it gRPC might have cut.
  if (it == unsent_arena_slices_.end() ||
      slice.size() > it->second.block.capacity) {
    return std::nullopt;
  }
  const shm::Block block = it->second.block;
  unsent_arena_slices_.erase(it);
  unsent_arena_slice_count_.fetch_sub(1, std::memory_order_relaxed);
  return block;
}

void Session::DropArenaSlice(const uint8_t* data, const void* owner) {
  std::lock_guard<std::mutex> lock(arena_slices_mu_);
  auto it = unsent_arena_slices_.find(data);
  if (it == unsent_arena_slices_.end() || it->second.owner != owner) {
    return;  // sent, or reclaimed
  }
  endpoint_->FreeUnsent(it->second.block).IgnoreError();
  unsent_arena_slices_.erase(it);
  unsent_arena_slice_count_.fetch_sub(1, std::memory_order_relaxed);
}

void Session::DestroyArenaSlice(void* owner) {
  auto* arena_slice = static_cast<ArenaSliceOwner*>(owner);
  arena_slice->session->DropArenaSlice(arena_slice->data, arena_slice);
  delete arena_slice;  // may free the session: after its lock is released
}

absl::Status Session::SendFrame(codec::FrameType type, uint64_t stream,
                                absl::string_view bytes, absl::Time deadline,
                                uint16_t flags, uint64_t aux) {
  return SendFilled(type, stream, bytes.size(), deadline, flags, aux,
                    [&](absl::Span<const codec::OutChunk> chunks) {
                      const char* from = bytes.data();
                      for (const codec::OutChunk& chunk : chunks) {
                        std::memcpy(chunk.data, from, chunk.size);
                        from += chunk.size;
                      }
                      return absl::OkStatus();
                    });
}

}  // namespace shmgrpc::transport
