#include "transport/server_call.h"

#include <algorithm>
#include <chrono>
#include <iterator>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "codec/call_frames.h"
#include "codec/frame_type.h"
#include "codec/grpc_metadata.h"
#include "codec/metadata_rules.h"
#include "transport/arena_replies.h"

namespace shmgrpc::transport {
namespace {

// Keys the injector sets; whatever a client sends under them is dropped.
constexpr absl::string_view kReservedMetadataPrefix = "x-shmgrpc-";
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

// One slice per frame (a chained message becomes several), each giving its
// block back when gRPC drops it.
CoreCall::Slices WrapRequestSlices(const std::shared_ptr<Session>& session,
                                   const InboundMessage& message) {
  CoreCall::Slices slices;
  for (const shm::ReceivedMessage& frame : message.frames) {
    if (frame.descriptor.length == 0) {
      session->Release(frame);
      continue;
    }
    slices.push_back(grpc_slice_new_with_user_data(
        const_cast<uint8_t*>(frame.data), frame.descriptor.length,
        &ReleaseSlice, new SliceRelease{session, frame}));
  }
  return slices;
}

}  // namespace

absl::Time InjectedCall::SendDeadline() const {
  // A client whose session thread stops reading (stopped, not dead) fills
  // the ring; the wait is bounded so it cannot hold its session's
  // completion-queue thread, and with it that client's other calls, for
  // long (nor longer than the session waits for a stalled peer at all).
  constexpr absl::Duration kMaxRingFullWait = absl::Seconds(5);
  return std::min(deadline_,
                  absl::Now() + std::min(kMaxRingFullWait,
                                         session_->stalled_peer_timeout()));
}

InjectedCall::InjectedCall(std::shared_ptr<Session> session, uint64_t stream_id,
                           grpc::CompletionQueue* cq, const CoreTarget& core,
                           const WindowLimits& send_limits,
                           const WindowLimits& receive_limits, StreamSlot slot,
                           std::function<void(uint64_t)> on_done)
    : session_(std::move(session)),
      stream_id_(stream_id),
      cq_(cq),
      core_(core),
      on_done_(std::move(on_done)),
      send_window_(send_limits),
      receive_window_(receive_limits),
      stream_slot_(std::move(slot)) {}

InjectedCall::~InjectedCall() {
  for (const InboundMessage& request : requests_) session_->Release(request);
  if (have_unary_request_) session_->Release(unary_request_);
  for (QueuedOp& op : ops_to_start_) {
    for (grpc_slice& slice : op.message) grpc_slice_unref(slice);
  }
  DropDeferredLocked();  // none left but after a failure to start at all
  session_->Release(assembler_.TakePending());
}

void InjectedCall::OnFrame(const shm::ReceivedMessage& message) {
  std::shared_ptr<InjectedCall> op_starter;
  std::unique_lock<std::mutex> lock(mu_);
  bool send_status = false;
  switch (static_cast<codec::FrameType>(message.descriptor.type)) {
    case codec::FrameType::kCallHeaders:
      if (!headers_seen_) {
        headers_seen_ = true;
        unary_ = (message.descriptor.flags & codec::kUnaryCallFlag) != 0;
        if (unary_) SetBusyLocked(true);  // until the call is done
        send_status = !StartLocked(message);
        break;
      }
      session_->Release(message);
      break;
    case codec::FrameType::kMessage: {
      const bool wanted =
          (unary_ && !have_unary_request_ && !half_closed_ && !finished_) ||
          (!unary_ && core_call_ != nullptr && !half_closed_ &&
           !write_failed_ && !status_override_.has_value());
      if (!wanted) {
        session_->Release(message);  // a protocol error, or after the end
        break;
      }
      const size_t limit = session_->max_received_message_bytes();
      const size_t bytes =
          assembler_.pending_bytes() + message.descriptor.length;
      if (bytes > limit) {
        // More than any client within its limits sends (one ignoring them,
        // e.g. chaining chunks without end): refused before it is assembled.
        session_->Release(message);
        session_->Release(assembler_.TakePending());
        send_status = RefuseLocked(
            "request too large",
            grpc::Status(
                grpc::StatusCode::RESOURCE_EXHAUSTED,
                absl::StrCat("Received message larger than max (at least ",
                             bytes, " vs. ", limit, ")")));
        break;
      }
      std::optional<InboundMessage> complete = assembler_.Add(message);
      if (!complete) break;  // more chunks follow
      if (unary_) {
        unary_request_ = *std::move(complete);
        have_unary_request_ = true;
      } else if (!receive_window_.OnArrived(complete->bytes)) {
        // Only a client ignoring the window it was given sends this.
        session_->Release(*complete);
        RefuseLocked("flow-control window",
                     grpc::Status(grpc::StatusCode::INTERNAL,
                                  "client exceeded the stream's flow-control "
                                  "window"));
      } else {
        requests_.push_back(*std::move(complete));
        SetBusyLocked(true);  // until the handler answers (or the end)
        MaybeWriteLocked();
      }
      break;
    }
    case codec::FrameType::kHalfClose:
      half_closed_ = true;
      if (unary_ && core_call_ == nullptr && !finished_) {
        send_status = !PrepareUnaryLocked();
      } else {
        MaybeWriteLocked();
      }
      break;
    case codec::FrameType::kWindowUpdate:
      send_window_.OnCredit(DecodeCredit(message.descriptor.aux));
      if (holding_response_ && send_window_.HasRoom() && !resume_pending_) {
        // The held response is sent from the CQ thread, not from here: the
        // session thread must never wait for ring space, or two sessions'
        // readers could each wait for the other to drain (see
        // ARCHITECTURE, fallback).
        resume_pending_ = true;
        AlarmNowLocked(&resume_alarm_, &resume_tag_);
      }
      break;
    case codec::FrameType::kCancel:
      // The client has closed the stream (and counts it so already).
      stream_slot_.Release();
      send_status = CancelForClientLocked("Cancelled by the client");
      break;
    default:
      session_->Release(message);
      break;
  }
  if (send_status) {
    // The status of a call that never started (bad headers, cancelled or
    // half-closed without a request). This is the session thread, which
    // must never wait for ring space: the CQ thread sends it.
    AlarmNowLocked(&status_alarm_, &status_tag_);
  }
  op_starter = TakeOpStarterLocked();
  lock.unlock();
  // Starting the unary call also runs the server's matching inline and
  // wakes the thread that will run the handler, which often preempts this
  // one; the call can complete meanwhile, and its completion must not wait
  // for this thread to be scheduled again (it took 20-60 us with callback
  // and async services when the call was started under the lock).
  if (op_starter) op_starter->StartQueuedOps();
}

bool InjectedCall::FinishUnstartedLocked(grpc::StatusCode code,
                                         const char* why) {
  if (have_unary_request_) {
    session_->Release(unary_request_);
    have_unary_request_ = false;
  }
  status_ = grpc::Status(code, why);
  finished_ = true;
  return true;
}

bool InjectedCall::PrepareUnaryLocked() {
  if (!have_unary_request_) {
    FinishUnstartedLocked(grpc::StatusCode::INTERNAL,
                          "unary call half-closed without a request");
    return false;
  }
  CoreCall::Slices request = WrapRequestSlices(session_, unary_request_);
  have_unary_request_ = false;
  core_call_ =
      std::make_unique<CoreCall>(core_.channel, core_.cq, method_, authority_,
                                 deadline_, std::move(unary_metadata_));
  ++outstanding_ops_;  // the call's one batch
  QueueOpLocked(OpStart::kStartUnary, std::move(request));
  return true;
}

bool InjectedCall::RefuseLocked(const std::string& kind,
                                const grpc::Status& status) {
  session_->LogPeerError(
      kind, absl::StrCat("stream ", stream_id_, ": ", status.error_message(),
                         ": refused"));
  if (unary_) {  // not started: its request is still being gathered
    status_ = status;
    finished_ = true;
    return true;
  }
  status_override_ = status;  // replaces gRPC's CANCELLED at kFinish
  CancelLocked();
  return false;
}

bool InjectedCall::StartLocked(const shm::ReceivedMessage& message) {
  absl::StatusOr<codec::CallHeaders> headers = codec::DecodeCallHeaders(
      absl::string_view(reinterpret_cast<const char*>(message.data),
                        message.descriptor.length));
  session_->Release(message);
  self_ = shared_from_this();
  if (!stream_slot_.held()) {
    const std::string why =
        absl::StrCat("more than ", session_->stream_slots().limit(),
                     " concurrent streams on this shm session");
    session_->LogPeerError(
        "stream limit",
        absl::StrCat("stream ", stream_id_, ": ", why, ": refused"));
    status_ = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, why);
    finished_ = true;
    return false;
  }
  // gRPC aborts the process on metadata it finds illegal, so what a client
  // sent is checked before any of it reaches gRPC.
  absl::Status usable = headers.status();
  for (size_t i = 0; usable.ok() && i < headers->metadata.size(); ++i) {
    usable = codec::CheckMetadataEntry(headers->metadata[i].first,
                                       headers->metadata[i].second);
  }
  if (!usable.ok()) {
    session_->LogPeerError(
        "call headers",
        absl::StrCat("stream ", stream_id_, ": ", usable.message()));
    status_ =
        grpc::Status(grpc::StatusCode::INTERNAL, std::string(usable.message()));
    finished_ = true;
    return false;
  }
  if (headers->deadline_unix_nanos != 0) {
    // Before 1970 is as expired as 1970 (and stays inside what
    // std::chrono::system_clock can hold).
    deadline_ =
        absl::FromUnixNanos(std::max<int64_t>(headers->deadline_unix_nanos, 1));
  }
  std::vector<std::pair<std::string, std::string>> metadata;
  metadata.reserve(headers->metadata.size() + 4);
  for (auto& [key, value] : headers->metadata) {
    if (absl::StartsWith(key, kReservedMetadataPrefix)) continue;
    metadata.emplace_back(std::move(key), std::move(value));
  }
  if (session_->token() != 0) {
    metadata.emplace_back(std::string(kReplyToKey),
                          ReplyToValue(*session_, stream_id_));
  }
  const PeerCredentials& peer = session_->peer();
  metadata.emplace_back(absl::StrCat(kPeerMetadataPrefix, "pid"),
                        absl::StrCat(peer.pid));
  metadata.emplace_back(absl::StrCat(kPeerMetadataPrefix, "uid"),
                        absl::StrCat(peer.uid));
  metadata.emplace_back(absl::StrCat(kPeerMetadataPrefix, "gid"),
                        absl::StrCat(peer.gid));
  if (unary_) {
    method_ = std::move(headers->method);
    authority_ = std::move(headers->authority);
    unary_metadata_ = std::move(metadata);
    return true;  // waits for the request and half-close
  }
  core_call_ = std::make_unique<CoreCall>(core_.channel, core_.cq,
                                          headers->method, headers->authority,
                                          deadline_, std::move(metadata));
  ++outstanding_ops_;
  QueueOpLocked(OpStart::kStartStream);
  return true;
}

void InjectedCall::MaybeWriteLocked() {
  if (finished_) {
    // The call is over: nothing more goes in.
    for (const InboundMessage& request : requests_) {
      session_->Release(request);
    }
    requests_.clear();
    return;
  }
  if (!started_ || writing_ || writes_done_sent_) return;
  if (!requests_.empty() && !write_failed_) {
    InboundMessage request = std::move(requests_.front());
    requests_.pop_front();
    writing_bytes_ = request.bytes;
    writing_sender_waits_ = request.SenderWaits();
    writing_ = true;
    ++outstanding_ops_;
    QueueOpLocked(OpStart::kWrite, WrapRequestSlices(session_, request));
    return;
  }
  if (half_closed_ || write_failed_) {
    writes_done_sent_ = true;
    writing_ = true;
    ++outstanding_ops_;
    QueueOpLocked(OpStart::kWritesDone);
  }
}

void InjectedCall::ReadNextResponseLocked() {
  ++outstanding_ops_;
  QueueOpLocked(OpStart::kRead);
}

void InjectedCall::SendResponseLocked(grpc::ByteBuffer* response,
                                      bool on_cq_thread) {
  SetBusyLocked(false);
  OutgoingFrame frame{"response", codec::FrameType::kMessage};
  // Counted before it leaves (its credit could come back first).
  frame.flags =
      send_window_.OnSent(response->Length()) ? codec::kWindowFullFlag : 0;
  frame.message.Swap(response);
  SendToClientLocked(std::move(frame), on_cq_thread);
}

void InjectedCall::SendToClientLocked(OutgoingFrame frame, bool on_cq_thread) {
  if (send_failed_) return;  // the call is ending; no frame waits again
  if (on_cq_thread) {
    SendDeferredLocked();
    if (send_failed_) return;
    const absl::Status sent = SendWaitingLocked(frame);
    OnSendLocked(frame.what, sent);
    return;
  }
  if (deferred_.empty()) {
    frame.prepared =
        frame.type == codec::FrameType::kMessage
            ? session_->PrepareByteBuffer(stream_id_, frame.message)
            : session_->PrepareFrame(frame.type, stream_id_, frame.bytes);
    if (frame.prepared) {
      frame.prepared->descriptor.flags |= frame.flags;
      frame.prepared->descriptor.aux = frame.aux;
      frame.message.Clear();  // in the block now (or it is the block)
      if (session_->TrySendPrepared(absl::MakeConstSpan(&*frame.prepared, 1))
              .ok()) {
        return;
      }
    }
  }
  if (frame.type == codec::FrameType::kMessage) session_->CountDeferredReply();
  deferred_.push_back(std::move(frame));
  if (!deferred_pending_) {
    deferred_pending_ = true;
    AlarmNowLocked(&deferred_alarm_, &deferred_tag_);
  }
}

absl::Status InjectedCall::SendWaitingLocked(OutgoingFrame& frame) {
  if (frame.prepared) {
    const absl::Status sent =
        session_->SendPrepared(*frame.prepared, SendDeadline());
    if (!sent.ok()) session_->FreePrepared(*frame.prepared);
    frame.prepared.reset();
    return sent;
  }
  switch (frame.type) {
    case codec::FrameType::kMessage:
      return session_->SendByteBuffer(stream_id_, frame.message, SendDeadline(),
                                      frame.flags);
    case codec::FrameType::kWindowUpdate:
      return session_->SendControl(frame.type, stream_id_, frame.aux,
                                   SendDeadline());
    default:
      return session_->SendFrame(frame.type, stream_id_, frame.bytes,
                                 SendDeadline(), frame.flags, frame.aux);
  }
}

void InjectedCall::SendDeferredLocked() {
  std::vector<OutgoingFrame> frames;
  frames.swap(deferred_);
  for (size_t i = 0; i < frames.size(); ++i) {
    const absl::Status sent = SendWaitingLocked(frames[i]);
    if (!sent.ok()) {
      OnSendLocked(frames[i].what, sent);
      deferred_.assign(std::make_move_iterator(frames.begin() + i + 1),
                       std::make_move_iterator(frames.end()));
      DropDeferredLocked();
      return;
    }
  }
}

void InjectedCall::DropDeferredLocked() {
  for (const OutgoingFrame& frame : deferred_) {
    if (frame.prepared) session_->FreePrepared(*frame.prepared);
  }
  deferred_.clear();
}

void InjectedCall::SendStreamStatusLocked() {
  if (deferred_.empty() && !client_stalled_) {
    std::optional<PreparedFrame> status =
        session_->PrepareFrame(codec::FrameType::kStatus, stream_id_,
                               codec::EncodeCallStatus(EncodableStatus()));
    if (status) {
      // Returned before the client can see the status (stream_slots.h).
      stream_slot_.Release();
      if (session_->TrySendPrepared(absl::MakeConstSpan(&*status, 1)).ok()) {
        status_sent_ = true;
        return;
      }
      session_->FreePrepared(*status);
    }
  }
  // SendStatusAndFinish, after the deferred frames.
  AlarmNowLocked(&status_alarm_, &status_tag_);
}

void InjectedCall::OnSendLocked(absl::string_view what,
                                const absl::Status& sent) {
  if (sent.ok()) return;
  // Dropped, the frame would leave the client's stream silently short of
  // it (a credit its writer waits for, its metadata): the call ends.
  send_failed_ = true;
  if (sent.code() == absl::StatusCode::kDeadlineExceeded) {
    client_stalled_ = true;
  }
  session_->LogPeerError(absl::StrCat(what, " not sent"),
                         absl::StrCat("stream ", stream_id_, ": ", what,
                                      " not sent: ", sent.message()));
  CancelLocked();
}

void InjectedCall::OpDone::Run(bool ok) {
  if (op_ == Op::kUnaryDone) {
    call_->OnUnaryDone(ok);
  } else {
    call_->OnCompletion(op_, ok);
  }
}

void InjectedCall::OnCompletion(Op op, bool ok) {
  bool send_status = false;
  std::shared_ptr<InjectedCall> op_starter;
  std::shared_ptr<InjectedCall> done;  // released after the lock
  {
    std::lock_guard<std::mutex> lock(mu_);
    --outstanding_ops_;
    switch (op) {
      case Op::kStart:
        started_ = true;
        if (!ok) {
          ++outstanding_ops_;
          QueueOpLocked(OpStart::kFinish);
          break;
        }
        ++outstanding_ops_;
        QueueOpLocked(OpStart::kReadInitialMetadata);
        MaybeWriteLocked();
        break;
      case Op::kInitialMetadata:
        if (ok) {
          OutgoingFrame frame{"initial metadata",
                              codec::FrameType::kInitialMetadata};
          frame.bytes = codec::EncodeMetadata(core_call_->InitialMetadata());
          SendToClientLocked(std::move(frame), /*on_cq_thread=*/false);
          ReadNextResponseLocked();
        } else {
          ++outstanding_ops_;
          QueueOpLocked(OpStart::kFinish);
        }
        break;
      case Op::kRead: {
        grpc::ByteBuffer response;
        if (ok) response = core_call_->TakeResponse();
        if (ok && cancelled_) {
          ReadNextResponseLocked();  // nobody wants it; read on to the end
        } else if (ok && !send_window_.HasRoom()) {
          // Hold it, and read no further, until the client has room: the
          // handler's next Write then waits, as gRPC flow control would make
          // it. (Holding the message rather than the read lets a finished
          // handler's end of stream and status through: the client may be
          // waiting for those before it consumes, e.g. a client-streaming
          // Finish, which receives the reply and the status together.)
          held_response_.Swap(&response);
          holding_response_ = true;
          ArmDeadlineLocked();
        } else if (ok) {
          SendResponseLocked(&response, /*on_cq_thread=*/false);
          ReadNextResponseLocked();
        } else {
          ++outstanding_ops_;
          QueueOpLocked(OpStart::kFinish);
        }
        break;
      }
      case Op::kWrite:
        writing_ = false;
        if (!ok) write_failed_ = true;  // the handler finished early
        if (ok && !writes_done_sent_) {
          // The handler's side took the request: credit the client.
          if (std::optional<Credit> credit = receive_window_.OnConsumed(
                  writing_bytes_, writing_sender_waits_)) {
            OutgoingFrame frame{"credit", codec::FrameType::kWindowUpdate};
            frame.aux = EncodeCredit(*credit);
            SendToClientLocked(std::move(frame), /*on_cq_thread=*/false);
          }
        }
        if (write_failed_) {
          for (const InboundMessage& request : requests_) {
            session_->Release(request);
          }
          requests_.clear();
        }
        MaybeWriteLocked();
        break;
      case Op::kFinish:
        status_ = status_override_.has_value() ? *status_override_
                                               : core_call_->status();
        finished_ = true;
        if (deadline_alarm_pending_) deadline_alarm_->Cancel();
        SendStreamStatusLocked();
        break;
      case Op::kSendStatus:
        SendDeferredLocked();
        send_status = true;
        break;
      case Op::kSendDeferred:
        deferred_pending_ = false;
        SendDeferredLocked();
        break;
      case Op::kSendReply:
        SendHeldUnaryReplyLocked();
        send_status = true;
        break;
      case Op::kDeadline:
        deadline_alarm_pending_ = false;
        if (ok && holding_response_) {
          status_override_ = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                                          "Deadline Exceeded");
          CancelLocked();
        }
        break;
      case Op::kResumeResponses:
        resume_pending_ = false;
        if (holding_response_ && send_window_.HasRoom()) {
          holding_response_ = false;
          SendResponseLocked(&held_response_, /*on_cq_thread=*/true);
          ReadNextResponseLocked();
        }
        break;
      case Op::kUnaryDone:
        break;  // OnUnaryDone
    }
    op_starter = TakeOpStarterLocked();
    done = TakeIfDoneLocked();
  }
  if (done) on_done_(stream_id_);
  if (send_status) SendStatusAndFinish();
  if (op_starter) op_starter->StartQueuedOps();
}

void InjectedCall::QueueOpLocked(OpStart op, CoreCall::Slices message) {
  ops_to_start_.push_back(QueuedOp{op, std::move(message)});
}

std::shared_ptr<InjectedCall> InjectedCall::TakeOpStarterLocked() {
  if (ops_to_start_.empty() || starting_ops_) return nullptr;
  if (self_ == nullptr) {
    // Done (or never started): only a cancel can be queued, for nothing.
    ops_to_start_.clear();
    return nullptr;
  }
  starting_ops_ = true;
  return self_;
}

void InjectedCall::StartQueuedOps() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!ops_to_start_.empty()) {
    QueuedOps ops;
    ops.swap(ops_to_start_);
    lock.unlock();
    for (QueuedOp& op : ops) StartOp(op);
    lock.lock();
  }
  starting_ops_ = false;
}

void InjectedCall::StartOp(QueuedOp& op) {
  switch (op.op) {
    case OpStart::kStartUnary:
      core_call_->StartUnary(std::move(op.message), &unary_done_);
      break;
    case OpStart::kStartStream:
      core_call_->StartStream(&start_done_);
      break;
    case OpStart::kReadInitialMetadata:
      core_call_->ReadInitialMetadata(&metadata_done_);
      break;
    case OpStart::kRead:
      core_call_->Read(&read_done_);
      break;
    case OpStart::kWrite:
      core_call_->Write(std::move(op.message), &write_done_);
      break;
    case OpStart::kWritesDone:
      core_call_->WritesDone(&write_done_);
      break;
    case OpStart::kFinish:
      core_call_->Finish(&finish_done_);
      break;
    case OpStart::kCancel:
      core_call_->Cancel();
      break;
  }
  op.message.clear();  // taken
}

void InjectedCall::AlarmNowLocked(std::unique_ptr<grpc::Alarm>* alarm,
                                  Tag* tag) {
  ++outstanding_ops_;
  *alarm = std::make_unique<grpc::Alarm>();
  (*alarm)->Set(cq_, std::chrono::system_clock::now(), tag);
}

void InjectedCall::OnUnaryDone(bool ok) {
  std::shared_ptr<InjectedCall> done;  // released after the lock
  {
    std::lock_guard<std::mutex> lock(mu_);
    --outstanding_ops_;
    status_ = core_call_->status();
    if (!ok && status_.ok()) {
      status_ = grpc::Status(grpc::StatusCode::INTERNAL,
                             "the in-process call failed");
    }
    response_ = core_call_->TakeResponse();
    finished_ = true;
    if (TrySendUnaryReplyLocked()) {
      status_sent_ = true;
    } else {
      // This may be a thread that must not wait for ring space (the
      // handler's, the session thread's): the CQ thread sends it.
      session_->CountDeferredReply();
      AlarmNowLocked(&reply_alarm_, &reply_tag_);
    }
    done = TakeIfDoneLocked();
  }
  if (done) on_done_(stream_id_);
}

bool InjectedCall::TrySendUnaryReplyLocked() {
  absl::InlinedVector<PreparedFrame, 3>& frames = unary_reply_;
  auto add = [&frames](std::optional<PreparedFrame> frame) {
    if (frame) frames.push_back(*std::move(frame));
    return frame.has_value();
  };
  const codec::Metadata initial_metadata = core_call_->InitialMetadata();
  std::optional<PreparedFrame> status =
      session_->PrepareFrame(codec::FrameType::kStatus, stream_id_,
                             codec::EncodeCallStatus(EncodableStatus()));
  bool prepared =
      status.has_value() &&
      (initial_metadata.empty() ||
       add(session_->PrepareFrame(codec::FrameType::kInitialMetadata,
                                  stream_id_,
                                  codec::EncodeMetadata(initial_metadata))));
  // The response after the others: taking its arena slice cannot be undone.
  if (prepared && status_.ok()) {
    prepared = add(session_->PrepareByteBuffer(stream_id_, response_));
  }
  if (status) frames.push_back(*std::move(status));
  if (!prepared) {
    for (const PreparedFrame& unsent : frames) session_->FreePrepared(unsent);
    frames.clear();
    return false;
  }
  // Returned before the client can see the status (stream_slots.h).
  stream_slot_.Release();
  if (!session_->TrySendPrepared(frames).ok()) return false;
  frames.clear();
  response_.Clear();
  return true;
}

void InjectedCall::SendHeldUnaryReplyLocked() {
  if (unary_reply_.empty()) {  // nothing prepared: the usual sends
    SendUnaryReplyLocked();
    return;
  }
  absl::Status sent;
  size_t i = 0;
  for (; i + 1 < unary_reply_.size() && sent.ok(); ++i) {
    sent = session_->SendPrepared(unary_reply_[i], SendDeadline());
  }
  if (!sent.ok()) --i;  // the one that failed
  if (sent.ok()) {
    // Only the status is left: SendStatusAndFinish re-encodes it (and posts
    // it for a stalled client).
    i = unary_reply_.size() - 1;
  } else {
    if (sent.code() == absl::StatusCode::kDeadlineExceeded) {
      client_stalled_ = true;
    }
    if (status_.ok()) {
      status_ = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                             std::string(sent.message()));
    }
  }
  for (; i < unary_reply_.size(); ++i) session_->FreePrepared(unary_reply_[i]);
  unary_reply_.clear();
  response_.Clear();
}

void InjectedCall::SendUnaryReplyLocked() {
  const codec::Metadata metadata = core_call_->InitialMetadata();
  // None when empty: the client completes the call's initial metadata with
  // its status then, and a failure without initial metadata or reply is,
  // as gRPC's trailers-only response is, one its client may retry. (A
  // handler that sent empty initial metadata explicitly is not told apart.)
  absl::Status sent;
  if (!metadata.empty()) {
    sent = session_->SendFrame(codec::FrameType::kInitialMetadata, stream_id_,
                               codec::EncodeMetadata(metadata), SendDeadline());
  }
  if (sent.ok() && status_.ok()) {
    sent = session_->SendByteBuffer(stream_id_, response_, SendDeadline());
  }
  if (!sent.ok()) {
    // Neither the reply nor its metadata alone: the status says why (a
    // handler's own error stays).
    if (sent.code() == absl::StatusCode::kDeadlineExceeded) {
      client_stalled_ = true;
    }
    if (status_.ok()) {
      status_ = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                             std::string(sent.message()));
    }
  }
  response_.Clear();
}

codec::CallStatus InjectedCall::EncodableStatus() const {
  codec::CallStatus status;
  status.code = static_cast<int32_t>(status_.error_code());
  status.message = status_.error_message();
  status.details = status_.error_details();
  if (core_call_ != nullptr) {
    status.trailing_metadata = core_call_->TrailingMetadata();
  }
  return status;
}

void InjectedCall::SendStatusAndFinish() {
  const codec::CallStatus status = EncodableStatus();
  bool client_stalled;
  {
    // Returned before the client can see the status (stream_slots.h).
    std::lock_guard<std::mutex> lock(mu_);
    stream_slot_.Release();
    client_stalled = client_stalled_;
  }
  // A client that stopped reading (SIGSTOP, a frozen cgroup) gets its status
  // once it reads again, without this call waiting for it: the call ends
  // here now, and the client's call does not wait forever for a status
  // that was dropped. (Not sent within Options::stalled_peer_timeout, the
  // session is closed instead, which ends the client's calls.) A gone
  // client needs no status.
  const std::string encoded = codec::EncodeCallStatus(status);
  if (client_stalled ||
      session_->SendFrame(codec::FrameType::kStatus, stream_id_, encoded,
                          SendDeadline())
              .code() == absl::StatusCode::kDeadlineExceeded) {
    session_->PostFrame(codec::FrameType::kStatus, stream_id_, encoded);
  }
  std::shared_ptr<InjectedCall> done;  // released after the lock
  {
    std::lock_guard<std::mutex> lock(mu_);
    status_sent_ = true;
    done = TakeIfDoneLocked();
  }
  if (done) on_done_(stream_id_);
}

void InjectedCall::SetBusyLocked(bool busy) {
  if (busy == busy_) return;
  busy_ = busy;
  if (busy) {
    session_->AddBusyStream();
  } else {
    session_->RemoveBusyStream();
  }
}

std::shared_ptr<InjectedCall> InjectedCall::TakeIfDoneLocked() {
  if (done_ || !status_sent_ || outstanding_ops_ != 0) return nullptr;
  SetBusyLocked(false);
  done_ = true;
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
  std::shared_ptr<InjectedCall> op_starter;
  bool send_status = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    send_status = CancelForClientLocked("client went away");
    op_starter = TakeOpStarterLocked();
  }
  if (send_status) SendStatusAndFinish();
  if (op_starter) op_starter->StartQueuedOps();
}

void InjectedCall::ArmDeadlineLocked() {
  if (deadline_alarm_ != nullptr || deadline_ == absl::InfiniteFuture()) {
    return;  // armed once per call; fires whether or not still holding
  }
  ++outstanding_ops_;
  deadline_alarm_pending_ = true;
  deadline_alarm_ = std::make_unique<grpc::Alarm>();
  deadline_alarm_->Set(cq_, absl::ToChronoTime(deadline_), &deadline_tag_);
}

bool InjectedCall::CancelForClientLocked(const char* why) {
  if (unary_ && core_call_ == nullptr && !finished_) {
    return FinishUnstartedLocked(grpc::StatusCode::CANCELLED, why);
  }
  CancelLocked();
  return false;
}

void InjectedCall::CancelLocked() {
  if (core_call_ == nullptr) return;  // nothing started
  cancelled_ = true;
  QueueOpLocked(OpStart::kCancel);
  if (holding_response_) {
    holding_response_ = false;
    held_response_.Clear();
    ReadNextResponseLocked();  // fails at once and leads to Finish
  }
}

}  // namespace shmgrpc::transport
