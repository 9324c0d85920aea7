// ClientCall: one RPC carried over a shm session by hijacking it in a client
// interceptor (gRPC 1.51 public API).
//
// How gRPC drives it (see docs/ARCHITECTURE.md, "client interceptor"): each
// batch of ops reaches Intercept() three times: a forward pass (send hooks
// only; a recv-only batch has no hooks at all), a recv pass that must fill
// the PRE_RECV_* hooks (run by gRPC inside our own Hijack()/Proceed() call,
// which is how it is told apart, via a thread-local), and a POST pass (told
// apart from a forward pass by having seen the batch object before). The
// first batch decides: hijack (protobuf method, live session, request fits)
// or proceed over the plain channel, untouched.
//
// A recv pass is held until what it needs has arrived (initial metadata, a
// message or end of stream, status) and is completed, outside any lock, from
// whichever thread made it ready. Deadlines are enforced with the process's
// DeadlineTimer and forwarded to the server; TryCancel, a gone session, an
// oversize message all end the call with the matching status and tell the
// server. Streaming calls are flow controlled (flow_window.h): a write batch
// that finds the window full is parked, not waited for (the app's thread or
// gRPC's callback thread is never blocked in here; a sync Write still blocks
// in gRPC until the batch completes), and resumed when credit comes; credit
// for what this side consumed goes back without ever waiting on the session
// thread. Messages
// may arrive chained over several blocks (MessageAssembler) and are parsed
// in place across them.
//
// Retries: gRPC applies a service config's retryPolicy in its core, which a
// hijacked call bypasses, so a unary call whose method has one retries here
// as gRPC would: an attempt that ends with a retryable code before the
// server sent initial metadata or a reply (gRPC's "not committed") is sent
// again on a new stream of the same session after a jittered exponential
// backoff (or the server's grpc-retry-pushback-ms), at most maxAttempts in
// all, within the call's deadline, subject to the channel's retry throttle.
// The request is kept (serialized) for that. An attempt whose session
// closes (server killed) fails UNAVAILABLE and is retried likewise, on the
// link's next session; an attempt that finds no session fails at once and
// counts, as a plain attempt without a connection does.
// Streaming methods with a retry policy, and hedged methods, go plain.
#ifndef SHMGRPC_TRANSPORT_CLIENT_CALL_H_
#define SHMGRPC_TRANSPORT_CLIENT_CALL_H_

#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "codec/call_frames.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/client_interceptor.h"
#include "grpcpp/support/interceptor.h"
#include "grpcpp/support/status.h"
#include "shm/endpoint.h"
#include "transport/client_core.h"
#include "transport/deadline_timer.h"
#include "transport/flow_window.h"
#include "transport/inbound_message.h"
#include "transport/service_config.h"
#include "transport/stream_slots.h"

namespace shmgrpc::transport {

class ClientCall : public std::enable_shared_from_this<ClientCall> {
 public:
  ClientCall(std::shared_ptr<ClientCore> core,
             grpc::experimental::ClientRpcInfo* info);

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods);
  // A frame for this call (session thread). Takes ownership of `message`.
  void OnFrame(const shm::ReceivedMessage& message);
  // Ends the call locally with `status` unless it already has one. When this
  // ends it, `ended_count` (if given) is incremented before the application
  // can see the status.
  void Abort(const grpc::Status& status, bool tell_server,
             std::atomic<uint64_t>* ended_count = nullptr);
  // Its session closed: a retry if the call's policy allows one (on the
  // link's next session), else Abort(UNAVAILABLE, counted in
  // `aborted_count`).
  void OnSessionClosed(std::atomic<uint64_t>* aborted_count);
  // gRPC destroyed the RPC: stop timers, unregister, return held blocks.
  void Finish();

 private:
  using Batch = grpc::experimental::InterceptorBatchMethods;

  struct PendingRecv {
    Batch* methods;
    bool initial_metadata;
    bool message;
    bool status;
  };
  struct Completion {
    PendingRecv recv;
    bool have_message = false;
    InboundMessage message;
  };

  bool DecideHijack(Batch* methods);
  // A write whose stream window is full is parked instead of waiting on the
  // app's (or gRPC's callback) thread, and so is every send batch after it
  // (a half-close must not overtake it); credit or the call's end resumes
  // them, in order, on a short-lived thread. True if `methods` was parked.
  bool ParkIfWindowFull(Batch* methods);
  // On a thread of its own (see the .cc for when there is none).
  void ResumeParkedSends();
  // Sends the parked batches while they may go; the resuming thread's body.
  void SendParked();
  // The first parked batch may go now (mu_ held).
  bool CanResumeLocked();
  void SendPass(Batch* methods);
  void SendHeaders(Batch* methods);
  // The method's name ("/package.Service/Method"), readable for the whole
  // call.
  const char* MethodName() const {
    return generic_method_.has_value() ? generic_method_->c_str()
                                       : info_->method();
  }
  void SendMessage(Batch* methods);
  // An attempt ended with `status` before the call committed (mu_ held):
  // true when the retry policy sends it again (then scheduled; `status` is
  // kept as the call's, should no further attempt start).
  bool ScheduleRetryLocked(const codec::CallStatus& status);
  void StartNextAttempt();
  // No thread for the next attempt: the call ends as its last attempt did.
  void EndWithoutRetry();
  // A retry attempt that finds no session (the server's shm went away, its
  // plain port may still serve) goes over plain gRPC, as a plain channel's
  // next attempt would, and its outcome is the attempt's. Waits for that
  // attempt on the calling thread (the retry's own).
  struct PlainAttempt;
  void StartPlainAttempt();
  void OnPlainAttemptDone(PlainAttempt& attempt, const grpc::Status& status);
  void RecvPass(Batch* methods);
  // Moves every pending recv that can complete now into `ready` (mu_ held).
  void TakeReadyLocked(std::vector<Completion>* ready);
  // The call counts as a busy stream of its session (Session::AddBusyStream)
  // while it awaits an answer: a unary attempt from its registration until
  // it ends, a stream from a message sent until one comes back (or the
  // end). Both mu_ held; ending is idempotent.
  void CountBusyLocked(const std::shared_ptr<Session>& session);
  void EndBusyLocked();
  void Complete(std::vector<Completion>& ready);
  // Takes the unread messages and a partly assembled one (mu_ held).
  std::deque<InboundMessage> TakeUnreadLocked();
  void ReleaseAll(std::deque<InboundMessage>& messages);
  void FailSend(Batch* methods, const absl::Status& why);
  void TellServerCancelled();
  // Streams: returns credit to the server without ever waiting
  // (Session::PostControl).
  void SendCredit(const Credit& credit);

  const std::shared_ptr<ClientCore> core_;
  grpc::experimental::ClientRpcInfo* const info_;
  // The channel's message limits, lowered by the method's service config
  // (set before the call is hijacked).
  size_t max_send_bytes_;
  size_t max_receive_bytes_;
  std::shared_ptr<Session> session_;  // set when hijacked
  // This attempt's stream (a retry takes a new one).
  std::atomic<uint64_t> stream_id_{0};
  absl::Time deadline_ = absl::InfiniteFuture();

  std::mutex decide_mu_;
  bool decided_ = false;
  std::atomic<bool> hijacked_{false};
  bool headers_sent_ = false;  // forward passes are not concurrent for sends
  // Serialized size of the first batch's message, computed by DecideHijack.
  std::optional<size_t> first_message_size_;
  // A GenericStub's method name, copied when the call was made
  // (Options::carry_generic_stub_calls).
  std::optional<std::string> generic_method_;
  // The call's messages are grpc::ByteBuffers (a GenericStub's call), not
  // protobuf messages. Set by DecideHijack.
  bool byte_buffer_messages_ = false;
  // The deadline's timer, once the headers are out (read by Finish, after
  // every batch).
  std::optional<DeadlineTimer::Handle> deadline_timer_;
  // Streaming calls only (null for unary): flow control both ways.
  std::unique_ptr<SendWindow> send_window_;
  std::unique_ptr<ReceiveWindow> receive_window_;

  std::mutex mu_;
  MessageAssembler assembler_;           // chunks of a chained message
  std::deque<InboundMessage> messages_;  // received, not yet read
  std::vector<PendingRecv> pending_;
  // Batches past their forward pass, awaiting their POST pass (a handful at
  // most: one per op kind in flight).
  std::vector<const Batch*> forwarded_batches_;
  std::deque<Batch*> parked_sends_;  // send batches waiting, in order
  bool resuming_ = false;            // a thread is sending parked batches
  bool got_initial_metadata_ = false;
  bool got_unary_reply_ = false;      // over shm: a second one is an error
  codec::Metadata initial_metadata_;  // fixed once got_initial_metadata_
  bool finished_ = false;             // status_ is final
  grpc::Status status_;
  codec::Metadata trailing_metadata_;  // fixed once finished_
  bool ended_ = false;                 // Finish() ran

  // Unary calls with a retry policy (set by DecideHijack): what every
  // attempt sends, kept by the first.
  const RetryPolicy* retry_policy_ = nullptr;
  // Written under mu_ by the first attempt, before request_sent_.
  codec::CallHeaders retry_headers_;
  std::optional<std::string> retry_request_;  // serialized; or:
  grpc::ByteBuffer retry_buffer_;             // as a CQ-async call gave it
  bool request_sent_ = false;    // the first attempt's (guarded by mu_)
  int attempts_ = 1;             // guarded by mu_
  absl::Duration next_backoff_;  // guarded by mu_
  // Backoffs before the next attempt (guarded by mu_).
  std::vector<DeadlineTimer::Handle> retry_timers_;
  std::shared_ptr<PlainAttempt> plain_attempt_;  // under way; guarded by mu_
  std::shared_ptr<Session> busy_on_;  // see CountBusyLocked; guarded by mu_
  // This attempt's stream among its session's open streams
  // (stream_slots.h): returned when its status comes, or with the kCancel
  // that closes it. Guarded by mu_.
  StreamSlot stream_slot_;
};

// The interceptor gRPC owns; forwards to the shared ClientCall.
class ClientCallInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit ClientCallInterceptor(std::shared_ptr<ClientCall> call)
      : call_(std::move(call)) {}
  ~ClientCallInterceptor() override { call_->Finish(); }
  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    call_->Intercept(methods);
  }

 private:
  std::shared_ptr<ClientCall> call_;
};

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_CLIENT_CALL_H_
