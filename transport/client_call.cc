#include "transport/client_call.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <random>
#include <string>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "codec/frame_type.h"
#include "codec/grpc_metadata.h"
#include "codec/message_codec.h"
#include "codec/metadata_rules.h"
#include "google/protobuf/message_lite.h"
#include "grpcpp/generic/generic_stub.h"
#include "shm/thread.h"
#include "transport/client_context_internals.h"
#include "transport/protobuf_methods.h"

namespace shmgrpc::transport {
namespace {

using grpc::experimental::InterceptionHookPoints;
using Hook = InterceptionHookPoints;

// GRPC_ARG_MAX_METADATA_SIZE's default.
constexpr size_t kGrpcDefaultMaxMetadataBytes = 8192;

using codec::MetadataSize;

// What a plain channel counts against GRPC_ARG_MAX_METADATA_SIZE for a
// call's end: the trailers, grpc-status, grpc-message and the status details
// (unless the trailers already carry them).
size_t TrailersSize(const codec::CallStatus& status) {
  constexpr absl::string_view kDetailsKey = "grpc-status-details-bin";
  size_t size =
      MetadataSize(status.trailing_metadata) +
      (sizeof("grpc-status") - 1 + 2 + codec::kMetadataEntryOverhead) +
      (sizeof("grpc-message") - 1 + status.message.size() +
       codec::kMetadataEntryOverhead);
  const bool details_in_trailers = std::any_of(
      status.trailing_metadata.begin(), status.trailing_metadata.end(),
      [&](const auto& entry) { return entry.first == kDetailsKey; });
  if (!status.details.empty() && !details_in_trailers) {
    size += kDetailsKey.size() + status.details.size() +
            codec::kMetadataEntryOverhead;
  }
  return size;
}

// Set by a forward pass around its Hijack()/Proceed(): gRPC runs the recv
// pass of the same batch synchronously inside that call, on this thread.
thread_local const ClientCall* tls_recv_pass_of = nullptr;

bool Has(grpc::experimental::InterceptorBatchMethods* m, Hook hook) {
  return m->QueryInterceptionHookPoint(hook);
}

grpc::Status ToGrpc(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kResourceExhausted:
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          std::string(status.message()));
    case absl::StatusCode::kDeadlineExceeded:
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          "Deadline Exceeded");
    default:
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          absl::StrCat("shm transport: ", status.message()));
  }
}

}  // namespace

ClientCall::ClientCall(std::shared_ptr<ClientCore> core,
                       grpc::experimental::ClientRpcInfo* info)
    : core_(std::move(core)),
      info_(info),
      max_send_bytes_(core_->settings().max_send_message_bytes),
      max_receive_bytes_(core_->settings().max_receive_message_bytes) {
  // A GenericStub names its method with a std::string that the app may let
  // go of once the call is made (a temporary among PrepareCall's
  // arguments), and gRPC keeps only the pointer: such a name is copied now.
  // Generated names are static.
  if (core_->options().carry_generic_stub_calls &&
      !core_->IsProtobufMethod(info->method()) &&
      NamedAtRunTime(info->method())) {
    generic_method_ = info->method();
  }
}

void ClientCall::Intercept(Batch* m) {
  if (tls_recv_pass_of == this) {
    tls_recv_pass_of = nullptr;
    RecvPass(m);
    return;
  }
  bool first_batch = false;
  {
    std::lock_guard<std::mutex> lock(decide_mu_);
    if (!decided_) {
      decided_ = true;
      first_batch = true;
      hijacked_.store(DecideHijack(m), std::memory_order_release);
    }
  }
  if (!hijacked_.load(std::memory_order_acquire)) {
    m->Proceed();
    return;
  }
  if (Has(m, Hook::PRE_SEND_CANCEL)) {
    // Proceed is a no-op for cancel batches; returning continues them.
    Abort(grpc::Status(grpc::StatusCode::CANCELLED, "Cancelled"),
          /*tell_server=*/true);
    return;
  }
  if (!first_batch) {
    // Forward and POST passes cannot be told apart by their hooks (a forward
    // pass of a recv-only batch has none, and neither has the POST pass of a
    // send-close batch), but the batch object is the same in all three
    // passes: the first sighting is the forward pass, the next the POST pass.
    bool post_pass;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it =
          std::find(forwarded_batches_.begin(), forwarded_batches_.end(), m);
      post_pass = it != forwarded_batches_.end();
      if (post_pass) {
        forwarded_batches_.erase(it);
      } else {
        forwarded_batches_.push_back(m);
      }
    }
    if (post_pass) {
      m->Proceed();
      return;
    }
  } else {
    std::lock_guard<std::mutex> lock(mu_);
    forwarded_batches_.push_back(m);
  }
  if (!first_batch && ParkIfWindowFull(m)) return;
  SendPass(m);
  tls_recv_pass_of = this;
  if (first_batch) {
    m->Hijack();
  } else {
    m->Proceed();
  }
  tls_recv_pass_of = nullptr;
}

bool ClientCall::ParkIfWindowFull(Batch* m) {
  const bool message = Has(m, Hook::PRE_SEND_MESSAGE);
  if (!send_window_ || (!message && !Has(m, Hook::PRE_SEND_CLOSE))) {
    return false;
  }
  // Under mu_, which the credit path takes after crediting the window: a
  // credit either lands before this check or finds the batch parked.
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return false;  // its send fails at once
  if (parked_sends_.empty() && !resuming_ &&
      (!message || send_window_->HasRoom())) {
    return false;
  }
  parked_sends_.push_back(m);
  return true;
}

bool ClientCall::CanResumeLocked() {
  if (parked_sends_.empty()) return false;
  return finished_ || !Has(parked_sends_.front(), Hook::PRE_SEND_MESSAGE) ||
         send_window_->HasRoom();
}

void ClientCall::ResumeParkedSends() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (resuming_ || !CanResumeLocked()) return;
    resuming_ = true;
  }
  // Not on this thread: it may be the session thread, and sending may wait
  // for ring space. Rare: once per window's worth of messages that a writer
  // gets ahead of its reader.
  absl::StatusOr<shm::Thread> resumer = shm::Thread::Start(
      "shm-resume", [self = shared_from_this()] { self->SendParked(); });
  if (resumer.ok()) {
    resumer->detach();
    return;
  }
  // No thread to send them from (a pids limit): the call ends, and its
  // parked batches complete here without sending anything, which waits for
  // nothing (Abort comes back to this with the call finished).
  std::deque<Batch*> parked;
  {
    std::lock_guard<std::mutex> lock(mu_);
    resuming_ = false;
    if (finished_) parked.swap(parked_sends_);
  }
  if (parked.empty()) {
    Abort(ToGrpc(resumer.status()), /*tell_server=*/true);
    return;
  }
  for (Batch* m : parked) {
    // As a write after the call's end fails.
    if (Has(m, Hook::PRE_SEND_MESSAGE)) m->FailHijackedSendMessage();
    m->Proceed();
  }
}

void ClientCall::SendParked() {
  for (;;) {
    Batch* m;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!CanResumeLocked()) {
        resuming_ = false;  // the next credit starts another
        return;
      }
      m = parked_sends_.front();
      parked_sends_.pop_front();
    }
    SendPass(m);
    tls_recv_pass_of = this;
    m->Proceed();
    tls_recv_pass_of = nullptr;
  }
}

bool ClientCall::DecideHijack(Batch* m) {
  const auto deadline = info_->client_context()->deadline();
  const bool has_deadline =
      deadline != std::chrono::system_clock::time_point::max();
  if (Has(m, Hook::PRE_SEND_CANCEL) ||
      (has_deadline && deadline <= std::chrono::system_clock::now())) {
    // Cancelled (its first batch is the cancel) or expired before it
    // started: gRPC's core ends it without sending it, as a plain channel
    // does; over shm its handler would have run.
    core_->CountPlain(ClientCore::PlainReason::kEndedBeforeStart);
    return false;
  }
  std::shared_ptr<Session> session = core_->session();
  if (!session) {
    core_->CountPlain(ClientCore::PlainReason::kNoSession);
    return false;
  }
  // (Only the name's address is looked at: a GenericStub's may be gone.)
  if (!core_->IsProtobufMethod(info_->method())) {
    if (!generic_method_.has_value()) {
      core_->CountPlain(ClientCore::PlainReason::kNotProtobuf);
      return false;
    }
    byte_buffer_messages_ = true;
  }
  if (info_->client_context()->credentials() != nullptr) {
    // gRPC's core applies call credentials (their metadata, and the check
    // that the channel is secure enough for them) as the call is sent,
    // which a hijacked call never is: over shm they would be dropped.
    core_->CountPlain(ClientCore::PlainReason::kCallCredentials);
    return false;
  }
  if (InheritsFromServerCall(*info_->client_context())) {
    core_->CountPlain(ClientCore::PlainReason::kInheritsServerCall);
    return false;
  }
  const bool unary =
      info_->type() == grpc::experimental::ClientRpcInfo::Type::UNARY;
  if (const auto& config = core_->settings().service_config) {
    const MethodConfig method = config->For(MethodName());
    const RetryPolicy* retry =
        core_->settings().retries_enabled ? method.retry : nullptr;
    if ((method.hedged && core_->settings().retries_enabled) ||
        (retry != nullptr && !unary)) {
      core_->CountPlain(ClientCore::PlainReason::kRetryPolicy);
      return false;
    }
    retry_policy_ = retry;
    if (retry_policy_) next_backoff_ = retry_policy_->initial_backoff;
    // The lower of the channel's and the method's, as gRPC applies them.
    if (method.max_request_bytes) {
      max_send_bytes_ = std::min(max_send_bytes_, *method.max_request_bytes);
    }
    if (method.max_response_bytes) {
      max_receive_bytes_ =
          std::min(max_receive_bytes_, *method.max_response_bytes);
    }
  }
  if (Has(m, Hook::PRE_SEND_INITIAL_METADATA) &&
      MetadataSize(*m->GetSendInitialMetadata()) >
          core_->options().max_shm_metadata_bytes) {
    // gRPC's own metadata limit then decides, exactly as without shm.
    core_->CountPlain(ClientCore::PlainReason::kLargeMetadata);
    return false;
  }
  if (Has(m, Hook::PRE_SEND_MESSAGE)) {
    size_t size;
    if (const void* message = m->GetSendMessage();
        message != nullptr && !byte_buffer_messages_) {
      size = codec::SerializedSize(
          *static_cast<const google::protobuf::MessageLite*>(message));
      first_message_size_ = size;  // SendMessage reuses it
    } else {
      size = m->GetSerializedSendMessage()->Length();
    }
    // A request that cannot get shared memory now goes plain as a whole
    // (later messages of a hijacked call fall back inline instead); so does
    // one over the send limit, whose verdict is then gRPC's own.
    if (size > session->capacity_bytes() || size > max_send_bytes_) {
      core_->CountPlain(ClientCore::PlainReason::kTooLarge);
      return false;
    }
    if (!session->LikelyFits(size)) {
      core_->CountPlain(ClientCore::PlainReason::kArenaFull);
      return false;
    }
  }
  // A stream of the session's, counted as its server counts them.
  StreamSlot slot = session->stream_slots().TryOpen();
  if (!slot.held()) {
    core_->CountPlain(ClientCore::PlainReason::kStreamLimit);
    return false;
  }
  // Everything Abort() may touch is set before Register() publishes the
  // call to the session thread.
  if (has_deadline) deadline_ = absl::FromChrono(deadline);
  if (!unary) {
    const Options& options = core_->options();
    const WindowLimits own = OwnWindowLimits(options.stream_window_bytes,
                                             options.stream_window_messages);
    send_window_ = std::make_unique<SendWindow>(
        SenderLimits(own, session->peer_stream_window()));
    receive_window_ = std::make_unique<ReceiveWindow>(own);
  }
  session_ = session;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stream_slot_ = std::move(slot);
    if (unary) CountBusyLocked(session);  // before a reply can end it
  }
  stream_id_ = core_->Register(shared_from_this(), *session);
  if (stream_id_ == 0) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      EndBusyLocked();
      stream_slot_.Release();
    }
    session_ = nullptr;
    send_window_ = nullptr;
    receive_window_ = nullptr;
    core_->CountPlain(ClientCore::PlainReason::kNoSession);
    return false;
  }
  core_->CountShm();
  return true;
}

void ClientCall::SendPass(Batch* m) {
  if (Has(m, Hook::PRE_SEND_INITIAL_METADATA) && !headers_sent_) {
    headers_sent_ = true;
    SendHeaders(m);
  }
  if (Has(m, Hook::PRE_SEND_MESSAGE)) SendMessage(m);
  if (Has(m, Hook::PRE_SEND_CLOSE)) {
    absl::Status sent = session_->SendFrame(codec::FrameType::kHalfClose,
                                            stream_id_, "", deadline_);
    if (!sent.ok()) Abort(ToGrpc(sent), /*tell_server=*/false);
    if (retry_policy_ != nullptr) {
      std::lock_guard<std::mutex> lock(mu_);
      request_sent_ = true;  // with retry_headers_ and the request kept
    }
  }
}

void ClientCall::SendHeaders(Batch* m) {
  codec::CallHeaders headers;
  headers.method = MethodName();
  headers.authority = AuthorityOverride(*info_->client_context());
  if (headers.authority.empty()) {
    headers.authority = core_->settings().default_authority;
  }
  if (deadline_ != absl::InfiniteFuture()) {
    headers.deadline_unix_nanos = absl::ToUnixNanos(deadline_);
  }
  // One pass: the entries' size, their legality, and the copy to send.
  size_t size = 0;
  absl::Status legal;
  for (const auto& [key, value] : *m->GetSendInitialMetadata()) {
    size += key.size() + value.size() + codec::kMetadataEntryOverhead;
    // A plain channel's transport sends its own user-agent in place of the
    // app's (added below, as gRPC would).
    if (key == "user-agent" || !legal.ok()) continue;
    legal = codec::CheckMetadataEntry(key, value);
    headers.metadata.emplace_back(key, value);
  }
  // Only a corked call (its metadata comes after the hijack decision) can
  // get here with more than max_shm_metadata_bytes: refuse what a default
  // gRPC server would (or more, if the options allow more over shm).
  const size_t limit = std::max(kGrpcDefaultMaxMetadataBytes,
                                core_->options().max_shm_metadata_bytes);
  if (size > limit) {
    Abort(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                       absl::StrCat("request metadata of ", size,
                                    " bytes exceeds the limit of ", limit)),
          /*tell_server=*/false);
    return;
  }
  if (!legal.ok()) {
    // A plain channel aborts the process here (gRPC's API-misuse assert);
    // over shm the call fails instead.
    Abort(
        grpc::Status(grpc::StatusCode::INTERNAL, std::string(legal.message())),
        /*tell_server=*/false);
    return;
  }
  headers.metadata.emplace_back("user-agent", core_->settings().user_agent);
  if (retry_policy_ != nullptr) {
    std::lock_guard<std::mutex> lock(mu_);
    retry_headers_ = headers;
  }
  const uint16_t flags =
      info_->type() == grpc::experimental::ClientRpcInfo::Type::UNARY
          ? codec::kUnaryCallFlag
          : 0;
  // A stream's headers advertise this side's receive window, which the
  // server's responses keep to (flow_window.h).
  const uint64_t advertised_window =
      receive_window_ ? EncodeWindowLimits(receive_window_->limits()) : 0;
  absl::Status sent = session_->SendFrame(
      codec::FrameType::kCallHeaders, stream_id_,
      codec::EncodeCallHeaders(headers), deadline_, flags, advertised_window);
  if (!sent.ok()) {
    Abort(ToGrpc(sent), /*tell_server=*/false);
    return;
  }
  if (deadline_ != absl::InfiniteFuture()) {
    std::weak_ptr<ClientCall> weak = weak_from_this();
    absl::StatusOr<DeadlineTimer::Handle> timer =
        DeadlineTimer::Process().Schedule(deadline_, [weak] {
          if (auto call = weak.lock()) {
            call->Abort(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                                     "Deadline Exceeded"),
                        /*tell_server=*/true);
          }
        });
    if (!timer.ok()) {
      Abort(ToGrpc(timer.status()), /*tell_server=*/true);
      return;
    }
    deadline_timer_ = *timer;
  }
}

void ClientCall::FailSend(Batch* m, const absl::Status& why) {
  m->FailHijackedSendMessage();
  Abort(ToGrpc(why), /*tell_server=*/true);
}

void ClientCall::SendMessage(Batch* m) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) {
      m->FailHijackedSendMessage();
      return;
    }
    // A stream is busy from a message sent until one comes back (or the
    // end): a ping-pong stream counts like a unary call, an idle one not.
    if (send_window_ && busy_on_ == nullptr) CountBusyLocked(session_);
  }
  // Sync and callback calls offer the message itself (serialized in place
  // below); CQ-async calls only its serialized bytes, as a GenericStub's
  // ByteBuffers are taken.
  const auto* message = byte_buffer_messages_
                            ? nullptr
                            : static_cast<const google::protobuf::MessageLite*>(
                                  m->GetSendMessage());
  const grpc::ByteBuffer* buffer =
      message == nullptr ? m->GetSerializedSendMessage() : nullptr;
  const size_t size = message == nullptr ? buffer->Length()
                      : first_message_size_.has_value()
                          ? *std::exchange(first_message_size_, std::nullopt)
                          : codec::SerializedSize(*message);
  const size_t max_bytes = max_send_bytes_;
  if (size > max_bytes) {
    return FailSend(m, absl::ResourceExhaustedError(
                           absl::StrCat("Sent message larger than max (", size,
                                        " vs. ", max_bytes, ")")));
  }
  uint16_t flags = 0;
  if (send_window_) {
    // A write is parked until its window has room (ParkIfWindowFull), so
    // this does not wait; it fails once the call's window is closed.
    if (absl::Status room = send_window_->WaitForRoom(deadline_); !room.ok()) {
      return FailSend(m, room);
    }
    // Counted before it leaves: the server's credit for it may arrive before
    // the send returns. (A failed send ends the call.)
    if (send_window_->OnSent(size)) flags = codec::kWindowFullFlag;
  }
  if (retry_policy_ != nullptr) {
    // Kept for further attempts: by then the message may be gone (a
    // callback call's request need only live until its send completes).
    std::lock_guard<std::mutex> lock(mu_);
    if (message != nullptr) {
      retry_request_ = message->SerializeAsString();
    } else {
      retry_buffer_ = *buffer;  // shares the slices
    }
  }
  const absl::Status sent =
      retry_request_.has_value()
          ? session_->SendFrame(codec::FrameType::kMessage, stream_id_,
                                *retry_request_, deadline_)
      : message != nullptr
          ? session_->SendMessage(stream_id_, *message, size, deadline_, flags)
          : session_->SendByteBuffer(stream_id_, *buffer, deadline_, flags);
  if (!sent.ok()) FailSend(m, sent);
}

bool ClientCall::ScheduleRetryLocked(const codec::CallStatus& status) {
  const auto code = static_cast<grpc::StatusCode>(status.code);
  // Committed (gRPC's word): the server answered with initial metadata or a
  // reply; the application may have seen them.
  if (got_initial_metadata_ || !messages_.empty() ||
      assembler_.pending_bytes() != 0 || !retry_policy_->Retryable(code)) {
    return false;
  }
  const std::shared_ptr<RetryThrottle>& throttle =
      core_->settings().retry_throttle;
  if ((throttle && !throttle->RecordFailure()) ||
      attempts_ >= retry_policy_->max_attempts) {
    return false;
  }
  absl::Duration delay;
  constexpr absl::string_view kPushbackKey = "grpc-retry-pushback-ms";
  auto pushback = std::find_if(
      status.trailing_metadata.begin(), status.trailing_metadata.end(),
      [&](const auto& entry) { return entry.first == kPushbackKey; });
  if (pushback != status.trailing_metadata.end()) {
    // The server says when, or (negative, malformed) not to.
    int64_t ms;
    if (!absl::SimpleAtoi(pushback->second, &ms) || ms < 0) return false;
    delay = absl::Milliseconds(ms);
    next_backoff_ = retry_policy_->initial_backoff;
  } else {
    thread_local std::minstd_rand random(std::random_device{}());
    delay =
        next_backoff_ * std::uniform_real_distribution<double>(0, 1)(random);
    next_backoff_ = std::min(next_backoff_ * retry_policy_->backoff_multiplier,
                             retry_policy_->max_backoff);
  }
  std::weak_ptr<ClientCall> weak = weak_from_this();
  absl::StatusOr<DeadlineTimer::Handle> timer =
      DeadlineTimer::Process().ScheduleAfter(delay, [weak] {
        // Not on the timer thread: sending may wait for ring space.
        if (auto call = weak.lock()) {
          absl::StatusOr<shm::Thread> attempt = shm::Thread::Start(
              "shm-retry", [call] { call->StartNextAttempt(); });
          if (attempt.ok()) {
            attempt->detach();
          } else {
            call->EndWithoutRetry();  // no thread for the next attempt
          }
        }
      });
  if (!timer.ok()) return false;  // no timer thread: this attempt is final
  ++attempts_;
  // Should no further attempt start, this one's end is the call's.
  status_ = grpc::Status(code, status.message, status.details);
  trailing_metadata_ = status.trailing_metadata;
  retry_timers_.push_back(*timer);
  return true;
}

void ClientCall::OnSessionClosed(std::atomic<uint64_t>* aborted_count) {
  codec::CallStatus closed;
  closed.code = static_cast<int32_t>(grpc::StatusCode::UNAVAILABLE);
  closed.message = "shm session to the server closed";
  const uint64_t attempt_stream = stream_id_;
  bool retrying = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stream_slot_.Release();  // the session, and its count, are gone
    // As gRPC retries an attempt whose connection broke.
    if (!finished_ && retry_policy_ != nullptr) {
      retrying = ScheduleRetryLocked(closed);
    }
    if (retrying) EndBusyLocked();
  }
  if (retrying) {
    core_->Unregister(attempt_stream);
    return;
  }
  Abort(grpc::Status(grpc::StatusCode::UNAVAILABLE, closed.message),
        /*tell_server=*/false, aborted_count);
}

void ClientCall::EndWithoutRetry() {
  grpc::Status last_attempt;
  {
    std::lock_guard<std::mutex> lock(mu_);
    last_attempt = status_;  // what the attempt that failed ended with
  }
  Abort(last_attempt, /*tell_server=*/false);
}

void ClientCall::StartNextAttempt() {
  // The link's session now: after a restart, a new one.
  const std::shared_ptr<Session> session = core_->session();
  std::vector<Completion> ready;
  uint64_t id = 0;
  bool final = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;  // cancelled or past its deadline meanwhile
    // An attempt the server ended before the first one's request was even
    // out (headers it refused) is final: its sends still use stream_id_.
    if (!request_sent_) {
      finished_ = true;
      final = true;
      TakeReadyLocked(&ready);
    } else {
      // A session at its stream limit is as good as none: plain.
      StreamSlot slot =
          session ? session->stream_slots().TryOpen() : StreamSlot();
      if (slot.held()) id = core_->Register(shared_from_this(), *session);
      if (id != 0) {
        // Every reader of session_ and stream_id_ past the first attempt
        // takes mu_ first (or has finished_ set, and then this is not
        // reached).
        stream_slot_ = std::move(slot);  // the last attempt's goes
        session_ = session;
        stream_id_ = id;
        CountBusyLocked(session);
      }
    }
  }
  if (final) {
    Complete(ready);
    return;
  }
  if (id == 0) {  // no session to send it on
    StartPlainAttempt();
    return;
  }
  core_->CountRetry();
  absl::Status sent =
      session->SendFrame(codec::FrameType::kCallHeaders, id,
                         codec::EncodeCallHeaders(retry_headers_), deadline_,
                         codec::kUnaryCallFlag);
  if (sent.ok()) {
    sent = retry_request_.has_value()
               ? session->SendFrame(codec::FrameType::kMessage, id,
                                    *retry_request_, deadline_)
               : session->SendByteBuffer(id, retry_buffer_, deadline_);
  }
  if (sent.ok()) {
    sent = session->SendFrame(codec::FrameType::kHalfClose, id, "", deadline_);
  }
  if (!sent.ok()) Abort(ToGrpc(sent), /*tell_server=*/true);
}

struct ClientCall::PlainAttempt {
  grpc::ClientContext context;
  grpc::ByteBuffer request;
  grpc::ByteBuffer response;
};

void ClientCall::StartPlainAttempt() {
  std::shared_ptr<grpc::Channel> channel = core_->PlainAttemptChannel();
  auto attempt = std::make_shared<PlainAttempt>();
  std::string method;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    if (deadline_ != absl::InfiniteFuture()) {
      attempt->context.set_deadline(absl::ToChronoTime(deadline_));
    }
    for (const auto& [key, value] : retry_headers_.metadata) {
      // gRPC's transport sends its own user-agent; the rest are the app's,
      // already checked against gRPC's rules by the first attempt.
      if (key != "user-agent") attempt->context.AddMetadata(key, value);
    }
    // What the app set on its context, which outlives its call; the
    // channel's own defaults apply to the attempt as they would to the call.
    const grpc::ClientContext& app_context = *info_->client_context();
    if (const std::string& authority = AuthorityOverride(app_context);
        !authority.empty()) {
      attempt->context.set_authority(authority);
    }
    if (const std::optional<bool> wait_for_ready =
            ExplicitWaitForReady(app_context)) {
      attempt->context.set_wait_for_ready(*wait_for_ready);
    }
    if (retry_request_.has_value()) {
      grpc::Slice request(*retry_request_);
      attempt->request = grpc::ByteBuffer(&request, 1);
    } else {
      attempt->request = retry_buffer_;  // shares the slices
    }
    method = retry_headers_.method;
    plain_attempt_ = attempt;
  }
  core_->CountRetry();
  core_->CountRetryOverPlain();
  // Waited for on this thread (one of ours: retries start on a thread of
  // their own), with a completion queue of its own. Not with gRPC's
  // callback API: in gRPC 1.51 a channel whose last reference drops on one
  // of the callback API's threads joins that thread from itself, and the
  // process crashes later (grpc/grpc#32584, #37858): ASan caught it here
  // when a callback kept the last reference to this channel.
  grpc::CompletionQueue cq;
  grpc::GenericStub stub(channel);
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader =
      stub.PrepareUnaryCall(&attempt->context, method, attempt->request, &cq);
  grpc::Status status;
  if (reader == nullptr) {
    status = grpc::Status(grpc::StatusCode::INTERNAL,
                          "could not start a plain attempt");
  } else {
    reader->StartCall();
    reader->Finish(&attempt->response, &status, attempt.get());
    void* tag;
    bool ok;
    cq.Next(&tag, &ok);  // the one event: Finish (TryCancel ends it too)
  }
  cq.Shutdown();
  void* tag;
  bool ok;
  while (cq.Next(&tag, &ok)) {
  }
  OnPlainAttemptDone(*attempt, status);
}

void ClientCall::OnPlainAttemptDone(PlainAttempt& attempt,
                                    const grpc::Status& status) {
  codec::Metadata initial =
      codec::CopyMetadata(attempt.context.GetServerInitialMetadata());
  codec::CallStatus ended;
  ended.code = static_cast<int32_t>(status.error_code());
  ended.message = status.error_message();
  ended.details = status.error_details();
  ended.trailing_metadata =
      codec::CopyMetadata(attempt.context.GetServerTrailingMetadata());
  std::vector<Completion> ready;
  {
    std::lock_guard<std::mutex> lock(mu_);
    plain_attempt_ = nullptr;
    if (finished_) return;  // cancelled, or past its deadline, meanwhile
    // Committed, as gRPC judges it: the server sent initial metadata.
    if (!status.ok() && initial.empty() && ScheduleRetryLocked(ended)) return;
    finished_ = true;
    if (!got_initial_metadata_) {
      initial_metadata_ = std::move(initial);
      got_initial_metadata_ = true;
    }
    if (status.ok()) {
      // The reply as an inline message (owned bytes, nothing to release).
      auto bytes =
          std::make_shared<std::string>(attempt.response.Length(), '\0');
      const codec::OutChunk whole{reinterpret_cast<uint8_t*>(bytes->data()),
                                  bytes->size()};
      // Fails only for a buffer gRPC never filled: then empty, as Length().
      codec::CopyByteBuffer(attempt.response, {&whole, 1}).IgnoreError();
      shm::ReceivedMessage frame;
      frame.descriptor.offset = shm::kNoPayload;
      frame.descriptor.length = static_cast<uint32_t>(bytes->size());
      frame.data = reinterpret_cast<const uint8_t*>(bytes->data());
      frame.inline_payload = std::move(bytes);
      // Made in place: moving a local one made GCC 12 warn (a false
      // -Wmaybe-uninitialized in absl's InlinedVector, sanitizer builds).
      InboundMessage& reply = messages_.emplace_back();
      reply.bytes = frame.descriptor.length;
      reply.frames.push_back(std::move(frame));
      if (core_->settings().retry_throttle) {
        core_->settings().retry_throttle->RecordSuccess();
      }
    }
    status_ = status;
    trailing_metadata_ = std::move(ended.trailing_metadata);
    TakeReadyLocked(&ready);
  }
  Complete(ready);
}

void ClientCall::RecvPass(Batch* m) {
  PendingRecv recv{m, Has(m, Hook::PRE_RECV_INITIAL_METADATA),
                   Has(m, Hook::PRE_RECV_MESSAGE),
                   Has(m, Hook::PRE_RECV_STATUS)};
  if (!recv.initial_metadata && !recv.message && !recv.status) {
    m->Proceed();
    return;
  }
  std::vector<Completion> ready;
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.push_back(recv);
    TakeReadyLocked(&ready);
  }
  Complete(ready);
}

void ClientCall::TakeReadyLocked(std::vector<Completion>* ready) {
  auto it = pending_.begin();
  while (it != pending_.end()) {
    const PendingRecv& recv = *it;
    const bool can_complete =
        finished_ || ((!recv.initial_metadata || got_initial_metadata_) &&
                      (!recv.message || !messages_.empty()) && !recv.status);
    if (!can_complete) {
      ++it;
      continue;
    }
    Completion completion{recv};
    if (recv.message && !messages_.empty()) {
      completion.have_message = true;
      completion.message = messages_.front();
      messages_.pop_front();
    }
    ready->push_back(completion);
    it = pending_.erase(it);
  }
}

void ClientCall::Complete(std::vector<Completion>& ready) {
  for (Completion& c : ready) {
    Batch* m = c.recv.methods;
    // Read under no lock: these fields are fixed once their flag is set,
    // and the flag was seen set under mu_ before this completion was taken.
    if (c.recv.initial_metadata) {
      auto* map = m->GetRecvInitialMetadata();
      for (const auto& [key, value] : initial_metadata_) {
        map->emplace(grpc::string_ref(key), grpc::string_ref(value));
      }
    }
    grpc::Status parse_error;
    if (c.recv.message) {
      if (c.have_message) {
        absl::Status parsed;
        if (byte_buffer_messages_) {
          // Copied out: the app may keep a ByteBuffer as long as it likes,
          // and the block goes back to the server now.
          absl::InlinedVector<grpc::Slice, 1> slices;  // one chunk, usually
          for (const codec::InChunk& chunk : c.message.Chunks()) {
            slices.emplace_back(chunk.data, chunk.size);
          }
          *static_cast<grpc::ByteBuffer*>(m->GetRecvMessage()) =
              grpc::ByteBuffer(slices.data(), slices.size());
        } else {
          parsed = codec::ParseFrom(
              c.message.Chunks(),
              static_cast<google::protobuf::MessageLite*>(m->GetRecvMessage()));
        }
        session_->Release(c.message);
        if (receive_window_) {
          if (std::optional<Credit> credit = receive_window_->OnConsumed(
                  c.message.bytes, c.message.SenderWaits())) {
            SendCredit(*credit);
          }
        }
        if (!parsed.ok()) {
          parse_error = grpc::Status(grpc::StatusCode::INTERNAL,
                                     std::string(parsed.message()));
          m->FailHijackedRecvMessage();
        }
      } else {
        m->FailHijackedRecvMessage();  // end of stream
      }
    }
    if (c.recv.status) {
      *m->GetRecvStatus() = parse_error.ok() ? status_ : parse_error;
      auto* map = m->GetRecvTrailingMetadata();
      for (const auto& [key, value] : trailing_metadata_) {
        map->emplace(grpc::string_ref(key), grpc::string_ref(value));
      }
    }
    m->Proceed();
  }
}

void ClientCall::OnFrame(const shm::ReceivedMessage& message) {
  const auto type = static_cast<codec::FrameType>(message.descriptor.type);
  const absl::string_view payload(reinterpret_cast<const char*>(message.data),
                                  message.descriptor.length);
  std::vector<Completion> ready;
  switch (type) {
    case codec::FrameType::kMessage: {
      const size_t max_bytes = max_receive_bytes_;
      std::unique_lock<std::mutex> lock(mu_);
      if (finished_) {
        lock.unlock();
        session_->Release(message);
        return;
      }
      const size_t bytes =
          assembler_.pending_bytes() + message.descriptor.length;
      if (bytes > max_bytes) {
        InboundMessage partial = assembler_.TakePending();
        lock.unlock();
        session_->Release(partial);
        session_->Release(message);
        Abort(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                           absl::StrCat("Received message larger than max (",
                                        bytes, " vs. ", max_bytes, ")")),
              /*tell_server=*/true);
        return;
      }
      if (std::optional<InboundMessage> complete = assembler_.Add(message)) {
        // A stream's replies keep to the window its headers advertised; a
        // unary call has one.
        const bool over_window =
            receive_window_ ? !receive_window_->OnArrived(complete->bytes)
                            : std::exchange(got_unary_reply_, true);
        if (over_window) {
          lock.unlock();
          session_->Release(*complete);
          Abort(grpc::Status(grpc::StatusCode::INTERNAL,
                             receive_window_
                                 ? "server exceeded the stream's flow-control "
                                   "window"
                                 : "server sent a unary call a second reply"),
                /*tell_server=*/true);
          return;
        }
        messages_.push_back(*std::move(complete));
        if (send_window_) EndBusyLocked();  // a stream's answer came
        TakeReadyLocked(&ready);
      }
      break;
    }
    case codec::FrameType::kInitialMetadata: {
      absl::StatusOr<codec::Metadata> metadata = codec::DecodeMetadata(payload);
      // Over the limit as a plain channel counts it (a frame the decoder
      // refused by size is over it too): refused as a plain channel would.
      const bool over_limit =
          (metadata.ok() ? MetadataSize(*metadata) : payload.size()) >
          core_->settings().max_received_metadata_bytes;
      session_->Release(message);
      if (over_limit) {
        Abort(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                           "received initial metadata size exceeds limit"),
              /*tell_server=*/true);
        return;
      }
      if (!metadata.ok()) {
        Abort(grpc::Status(grpc::StatusCode::INTERNAL,
                           std::string(metadata.status().message())),
              /*tell_server=*/true);
        return;
      }
      std::lock_guard<std::mutex> lock(mu_);
      if (!got_initial_metadata_ && !finished_) {
        initial_metadata_ = std::move(*metadata);
        got_initial_metadata_ = true;
      }
      TakeReadyLocked(&ready);
      break;
    }
    case codec::FrameType::kStatus: {
      absl::StatusOr<codec::CallStatus> status =
          codec::DecodeCallStatus(payload);
      const bool over_limit =
          (status.ok() ? TrailersSize(*status) : payload.size()) >
          core_->settings().max_received_metadata_bytes;
      session_->Release(message);
      if (!status.ok() && !over_limit) {
        {
          std::lock_guard<std::mutex> lock(mu_);
          stream_slot_.Release();  // the server has closed the stream
        }
        Abort(grpc::Status(grpc::StatusCode::INTERNAL,
                           std::string(status.status().message())),
              /*tell_server=*/false);
        return;
      }
      const uint64_t attempt_stream = stream_id_;
      bool retrying = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!finished_ && !over_limit && retry_policy_ != nullptr &&
            status->code != 0) {
          retrying = ScheduleRetryLocked(*status);
        }
        EndBusyLocked();  // this attempt is over
        // Its stream too, as the server counts it (before the next attempt
        // opens one).
        stream_slot_.Release();
        if (!finished_ && !retrying) {
          finished_ = true;
          if (over_limit) {
            // As a plain channel refuses it (GRPC_ARG_MAX_METADATA_SIZE).
            status_ =
                grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                             "received trailing metadata size exceeds limit");
          } else {
            status_ = grpc::Status(static_cast<grpc::StatusCode>(status->code),
                                   status->message, status->details);
            trailing_metadata_ = std::move(status->trailing_metadata);
          }
          if (status_.ok() && core_->settings().retry_throttle) {
            core_->settings().retry_throttle->RecordSuccess();
          }
        }
        TakeReadyLocked(&ready);
      }
      if (retrying) {
        core_->Unregister(attempt_stream);  // the next attempt has its own
        return;
      }
      // The server is done: a writer waiting for credit fails now, as a
      // gRPC Write after the call ended does, and so do parked writes (a
      // handler that ends a client stream early never credits them: they
      // hung, past the deadline too, before this).
      if (send_window_) send_window_->Close();
      ResumeParkedSends();
      break;
    }
    case codec::FrameType::kWindowUpdate:
      if (send_window_) {
        send_window_->OnCredit(DecodeCredit(message.descriptor.aux));
        ResumeParkedSends();
      }
      return;
    default:  // not a server-to-client frame
      session_->Release(message);
      return;
  }
  Complete(ready);
}

void ClientCall::Abort(const grpc::Status& status, bool tell_server,
                       std::atomic<uint64_t>* ended_count) {
  std::vector<Completion> ready;
  std::deque<InboundMessage> unread;
  std::shared_ptr<PlainAttempt> plain;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    if (ended_count != nullptr) {
      ended_count->fetch_add(1, std::memory_order_relaxed);
    }
    finished_ = true;
    EndBusyLocked();
    status_ = status;
    unread = TakeUnreadLocked();
    TakeReadyLocked(&ready);
    plain = std::move(plain_attempt_);
  }
  if (plain) plain->context.TryCancel();
  if (send_window_) send_window_->Close();
  ReleaseAll(unread);
  if (tell_server) TellServerCancelled();
  ResumeParkedSends();  // their messages now fail
  Complete(ready);
}

void ClientCall::SendCredit(const Credit& credit) {
  // Usually on the session thread, which must never wait for ring space.
  session_->PostControl(codec::FrameType::kWindowUpdate, stream_id_,
                        EncodeCredit(credit), deadline_);
}

void ClientCall::TellServerCancelled() {
  if (!session_) return;
  StreamSlot slot;  // returned once the server must have closed the stream
  {
    std::lock_guard<std::mutex> lock(mu_);
    slot = std::move(stream_slot_);
  }
  // May run on the session thread (a reply over the size limit ends the
  // call there), so posted. A server that stopped reading (frozen) gets it
  // once it reads again, else its handler would run on; reading nothing for
  // Options::stalled_peer_timeout, it gets the session closed instead. A
  // gone session cancels the server side anyway.
  session_->PostFrame(codec::FrameType::kCancel, stream_id_, "",
                      std::move(slot));
}

void ClientCall::CountBusyLocked(const std::shared_ptr<Session>& session) {
  EndBusyLocked();
  session->AddBusyStream();
  busy_on_ = session;
}

void ClientCall::EndBusyLocked() {
  if (busy_on_ == nullptr) return;
  busy_on_->RemoveBusyStream();
  // session_ (or the link) still holds the session: this is not the last
  // reference, so no session is destroyed under mu_.
  busy_on_ = nullptr;
}

std::deque<InboundMessage> ClientCall::TakeUnreadLocked() {
  std::deque<InboundMessage> unread = std::exchange(messages_, {});
  unread.push_back(assembler_.TakePending());
  return unread;
}

void ClientCall::ReleaseAll(std::deque<InboundMessage>& messages) {
  for (const InboundMessage& message : messages) {
    if (session_) session_->Release(message);
  }
  messages.clear();
}

void ClientCall::Finish() {
  if (deadline_timer_) DeadlineTimer::Process().Cancel(*deadline_timer_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const DeadlineTimer::Handle& timer : retry_timers_) {
      DeadlineTimer::Process().Cancel(timer);
    }
  }
  if (!hijacked_.load(std::memory_order_acquire)) return;
  std::deque<InboundMessage> unread;
  bool tell_server = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (ended_) return;
    ended_ = true;
    unread = TakeUnreadLocked();
    // The app dropped a live call, or one this side ended without telling
    // the server (e.g. a send that failed), which may still count its
    // stream.
    tell_server = !finished_ || stream_slot_.held();
    finished_ = true;
    EndBusyLocked();
  }
  if (send_window_) send_window_->Close();
  ReleaseAll(unread);
  if (tell_server) TellServerCancelled();
  core_->Unregister(stream_id_);
}

}  // namespace shmgrpc::transport
