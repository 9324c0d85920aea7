#include "transport/server_call.h"

#include <chrono>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "codec/call_frames.h"
#include "codec/frame_type.h"
#include "transport/log.h"

namespace shmgrpc::transport {
namespace {

constexpr absl::string_view kPeerMetadataPrefix = "x-shmgrpc-peer-";

// What a request slice needs to give its block back when gRPC drops it.
struct SliceRelease {
  std::shared_ptr<Session> session;
  shm::ReceivedMessage message;
};

void ReleaseSlice(void* arg) {
  auto* release = static_cast<SliceRelease*>(arg);
  release->session->Release(release->message);
  delete release;
}

grpc::ByteBuffer WrapRequest(const std::shared_ptr<Session>& session,
                             const shm::ReceivedMessage& message) {
  if (message.descriptor.length == 0) {
    session->Release(message);
    grpc::Slice empty;
    return grpc::ByteBuffer(&empty, 1);
  }
  grpc::Slice slice(const_cast<uint8_t*>(message.data),
                    message.descriptor.length, &ReleaseSlice,
                    new SliceRelease{session, message});
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace

InjectedCall::InjectedCall(std::shared_ptr<Session> session,
                           uint64_t stream_id, grpc::GenericStub* stub,
                           grpc::CompletionQueue* cq,
                           std::function<void(uint64_t)> on_done)
    : session_(std::move(session)),
      stream_id_(stream_id),
      stub_(stub),
      cq_(cq),
      on_done_(std::move(on_done)) {}

InjectedCall::~InjectedCall() {
  for (const shm::ReceivedMessage& request : requests_) {
    session_->Release(request);
  }
}

void InjectedCall::OnFrame(const shm::ReceivedMessage& message) {
  std::unique_lock<std::mutex> lock(mu_);
  switch (static_cast<codec::FrameType>(message.descriptor.type)) {
    case codec::FrameType::kCallHeaders:
      if (call_ == nullptr && !finished_) {
        if (!StartLocked(message)) {
          lock.unlock();
          SendStatusAndFinish();
        }
        return;
      }
      break;
    case codec::FrameType::kMessage:
      if (call_ != nullptr && !half_closed_ && !write_failed_) {
        requests_.push_back(message);
        MaybeWriteLocked();
        return;
      }
      break;
    case codec::FrameType::kHalfClose:
      half_closed_ = true;
      MaybeWriteLocked();
      break;
    case codec::FrameType::kCancel:
      context_.TryCancel();
      break;
    default:
      break;
  }
  session_->Release(message);
}

bool InjectedCall::StartLocked(const shm::ReceivedMessage& message) {
  absl::StatusOr<codec::CallHeaders> headers = codec::DecodeCallHeaders(
      absl::string_view(reinterpret_cast<const char*>(message.data),
                        message.descriptor.length));
  session_->Release(message);
  if (!headers.ok()) {
    ShmLog("stream ", stream_id_, " from pid ", session_->peer().pid, ": ",
           headers.status().message());
    status_ = grpc::Status(grpc::StatusCode::INTERNAL,
                           std::string(headers.status().message()));
    finished_ = true;
    self_ = shared_from_this();
    return false;
  }
  if (headers->deadline_unix_nanos != 0) {
    context_.set_deadline(
        absl::ToChronoTime(absl::FromUnixNanos(headers->deadline_unix_nanos)));
  }
  if (!headers->authority.empty()) context_.set_authority(headers->authority);
  for (const auto& [key, value] : headers->metadata) {
    if (absl::StartsWith(key, kPeerMetadataPrefix)) continue;  // unforgeable
    context_.AddMetadata(key, value);
  }
  const PeerCredentials& peer = session_->peer();
  context_.AddMetadata(absl::StrCat(kPeerMetadataPrefix, "pid"),
                       absl::StrCat(peer.pid));
  context_.AddMetadata(absl::StrCat(kPeerMetadataPrefix, "uid"),
                       absl::StrCat(peer.uid));
  context_.AddMetadata(absl::StrCat(kPeerMetadataPrefix, "gid"),
                       absl::StrCat(peer.gid));
  call_ = stub_->PrepareCall(&context_, headers->method, cq_);
  self_ = shared_from_this();
  ++outstanding_ops_;
  call_->StartCall(&start_tag_);
  return true;
}

void InjectedCall::MaybeWriteLocked() {
  if (finished_) {
    // The call is over: nothing more goes in.
    for (const shm::ReceivedMessage& request : requests_) {
      session_->Release(request);
    }
    requests_.clear();
    return;
  }
  if (!started_ || writing_ || writes_done_sent_) return;
  if (!requests_.empty() && !write_failed_) {
    shm::ReceivedMessage request = requests_.front();
    requests_.pop_front();
    grpc::ByteBuffer buffer = WrapRequest(session_, request);
    writing_ = true;
    ++outstanding_ops_;
    call_->Write(buffer, &write_tag_);
    return;
  }
  if (half_closed_ || write_failed_) {
    writes_done_sent_ = true;
    writing_ = true;
    ++outstanding_ops_;
    call_->WritesDone(&write_tag_);
  }
}

void InjectedCall::OnCompletion(Op op, bool ok) {
  bool send_status = false;
  std::shared_ptr<InjectedCall> done;  // released after the lock
  {
    std::lock_guard<std::mutex> lock(mu_);
    --outstanding_ops_;
    switch (op) {
      case Op::kStart:
        started_ = true;
        if (!ok) {
          ++outstanding_ops_;
          call_->Finish(&status_, &finish_tag_);
          break;
        }
        ++outstanding_ops_;
        call_->ReadInitialMetadata(&metadata_tag_);
        MaybeWriteLocked();
        break;
      case Op::kInitialMetadata: {
        if (ok) {
          codec::Metadata metadata;
          for (const auto& [key, value] :
               context_.GetServerInitialMetadata()) {
            metadata.emplace_back(std::string(key.data(), key.size()),
                                  std::string(value.data(), value.size()));
          }
          session_
              ->SendFrame(codec::FrameType::kInitialMetadata, stream_id_,
                          codec::EncodeMetadata(metadata),
                          absl::InfiniteFuture())
              .IgnoreError();  // a gone session cancels the call anyway
        }
        ++outstanding_ops_;
        if (ok) {
          call_->Read(&response_, &read_tag_);
        } else {
          call_->Finish(&status_, &finish_tag_);
        }
        break;
      }
      case Op::kRead:
        ++outstanding_ops_;
        if (ok) {
          absl::Status sent =
              session_->SendByteBuffer(stream_id_, response_,
                                       absl::InfiniteFuture());
          response_.Clear();
          if (!sent.ok()) {
            ShmLog("stream ", stream_id_, ": response not sent: ",
                   sent.message());
            context_.TryCancel();
          }
          call_->Read(&response_, &read_tag_);
        } else {
          call_->Finish(&status_, &finish_tag_);
        }
        break;
      case Op::kWrite:
        writing_ = false;
        if (!ok) write_failed_ = true;  // the handler finished early
        if (write_failed_) {
          for (const shm::ReceivedMessage& request : requests_) {
            session_->Release(request);
          }
          requests_.clear();
        }
        MaybeWriteLocked();
        break;
      case Op::kFinish:
        finished_ = true;
        send_status = true;
        break;
    }
    done = TakeIfDoneLocked();
  }
  if (send_status) SendStatusAndFinish();
}

void InjectedCall::SendStatusAndFinish() {
  codec::CallStatus status;
  status.code = static_cast<int32_t>(status_.error_code());
  status.message = status_.error_message();
  status.details = status_.error_details();
  if (call_ != nullptr) {
    for (const auto& [key, value] : context_.GetServerTrailingMetadata()) {
      status.trailing_metadata.emplace_back(
          std::string(key.data(), key.size()),
          std::string(value.data(), value.size()));
    }
  }
  session_
      ->SendFrame(codec::FrameType::kStatus, stream_id_,
                  codec::EncodeCallStatus(status), absl::InfiniteFuture())
      .IgnoreError();  // a gone client needs no status
  std::shared_ptr<InjectedCall> done;  // released after the lock
  std::lock_guard<std::mutex> lock(mu_);
  status_sent_ = true;
  done = TakeIfDoneLocked();
}

std::shared_ptr<InjectedCall> InjectedCall::TakeIfDoneLocked() {
  if (done_ || !status_sent_ || outstanding_ops_ != 0) return nullptr;
  done_ = true;
  on_done_(stream_id_);
  return std::move(self_);
}

std::string InjectedCall::DebugString() {
  std::lock_guard<std::mutex> lock(mu_);
  return absl::StrCat("stream ", stream_id_, ": started=", started_,
                      " outstanding_ops=", outstanding_ops_,
                      " writing=", writing_, " half_closed=", half_closed_,
                      " writes_done=", writes_done_sent_,
                      " finished=", finished_, " status_sent=", status_sent_,
                      " done=", done_, " queued_requests=", requests_.size());
}

void InjectedCall::Cancel() {
  std::lock_guard<std::mutex> lock(mu_);
  context_.TryCancel();
}

}  // namespace shmgrpc::transport
