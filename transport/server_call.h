// InjectedCall: one shm stream replayed into the unchanged grpc::Server
// through its in-process channel.
//
// Every call is made with gRPC's core API (core_call.h), so its completions
// run on the thread that completes them, usually the handler's: a unary
// call is one batch, whose completion sends the whole reply at once if the
// client's ring has room; a stream's request is written into the handler
// and its next one started the moment the handler takes it, and a response
// the handler writes is sent to the client from the handler's own Write.
// No thread hop is added to what gRPC's in-process call has. A completion
// never waits for the client (it may run on the handler's, the session's
// or gRPC's own threads): a frame it cannot send at once (no ring slot, no
// single block) is queued, with every later frame of the call behind it,
// for the session's CQ thread, which may wait for room (`deferred_`). A
// completion may wait for mu_ while the CQ thread holds it waiting for
// room, as the session thread may (ARCHITECTURE, "No reader waits on a
// writer": the client's reader, which ends that wait, never waits).
//
// Requests enter zero-copy: each message is a grpc_slice over the client's
// arena (one slice per block of a chained message), released back to the
// client when gRPC drops the slice (right after the handler parsed it).
// Responses are copied once from gRPC's buffer into this side's arena, unless
// the arena-reply interceptor wrote them there already (arena_replies.h).
// The client's metadata and deadline are forwarded; the verified peer
// identity is added as x-shmgrpc-peer-{pid,uid,gid} and the reply's address
// as x-shmgrpc-reply-to (any x-shmgrpc- keys the client sent are dropped, so
// handlers can trust them). A kCancel frame or a dead session
// cancels the call (the handler sees IsCancelled). Streams are flow controlled
// both ways (flow_window.h): requests are credited as the handler takes them; a
// response read while the client's window is full is held, with no further
// read, until credit comes (sent from the CQ thread: the session thread never
// waits for ring space).
//
// Thread-safety: frames arrive on the session thread, core completions on
// any thread, alarms on the CQ thread; all state is under mu_. No gRPC op is
// started or cancelled under it, since its completion may run inside the
// start and takes mu_: ops are queued under the lock and started after it
// by one thread at a time, in order (StartQueuedOps), which also keeps a
// run of inline completions (each starting the next write) from recursing.
#ifndef SHMGRPC_TRANSPORT_SERVER_CALL_H_
#define SHMGRPC_TRANSPORT_SERVER_CALL_H_

#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/alarm.h"
#include "grpcpp/completion_queue.h"
#include "grpcpp/support/byte_buffer.h"
#include "shm/endpoint.h"
#include "transport/core_call.h"
#include "transport/flow_window.h"
#include "transport/inbound_message.h"
#include "transport/session.h"
#include "transport/stream_slots.h"

namespace shmgrpc::transport {

class InjectedCall : public std::enable_shared_from_this<InjectedCall> {
 public:
  enum class Op {
    kStart,
    kInitialMetadata,
    kRead,
    kWrite,
    kFinish,
    kResumeResponses,  // credit came for a held response (an alarm)
    kSendStatus,       // send an unstarted call's status (an alarm)
    kDeadline,         // the call's deadline, once a response was held
    kSendReply,        // unary: a reply that could not go out at once
    kSendDeferred,     // frames a completion could not send at once (alarm)
    kUnaryDone,        // unary: the call's one batch
  };
  // A completion-queue tag: the call and which of its ops completed.
  struct Tag {
    InjectedCall* call;
    Op op;
  };
  // Where calls are made, with gRPC's core API (core_call.h).
  struct CoreTarget {
    grpc_channel* channel;
    grpc_completion_queue* cq;  // a callback queue
  };

  // `on_done` runs once, after the status went out and every op completed,
  // without this call's lock held.
  // `send_limits`: the responses' window (the server's own, narrowed to
  // what the client advertised, SenderLimits); `receive_limits`: the
  // requests' (the server's own, as its handshake advertised it).
  // `slot`: the stream's place among the session's open streams, returned
  // as the status goes out or a kCancel comes (stream_slots.h); a call
  // given none (the client is past the limit) is refused
  // RESOURCE_EXHAUSTED without reaching the service.
  InjectedCall(std::shared_ptr<Session> session, uint64_t stream_id,
               grpc::CompletionQueue* cq, const CoreTarget& core,
               const WindowLimits& send_limits,
               const WindowLimits& receive_limits, StreamSlot slot,
               std::function<void(uint64_t)> on_done);
  ~InjectedCall();

  // Session thread. Takes ownership of `message`.
  void OnFrame(const shm::ReceivedMessage& message);
  // An op completed: an alarm this call set, on the CQ thread, which may
  // wait for the client (kResumeResponses, kSendStatus, kDeadline,
  // kSendReply, kSendDeferred); or a core op, on any thread, which must not.
  void OnCompletion(Op op, bool ok);
  // The client is gone or asked to cancel.
  void Cancel();
  // One line of state, for shutdown diagnostics.
  std::string DebugString();

 private:
  // A gRPC op this call starts or cancels, queued under mu_ and started
  // after it (see the thread-safety note on top).
  enum class OpStart {
    kStartUnary,   // the unary call's one batch, with `message`
    kStartStream,  // the stream's metadata
    kReadInitialMetadata,
    kRead,
    kWrite,  // with `message`
    kWritesDone,
    kFinish,
    kCancel,
  };
  struct QueuedOp {
    OpStart op;
    CoreCall::Slices message;
  };
  // Rarely more than a read, a write and a cancel at once: no heap
  // allocation per op.
  using QueuedOps = absl::InlinedVector<QueuedOp, 3>;
  // A frame for the client. A completion that cannot send it at once (no
  // ring slot, no single block) leaves it, prepared if it could be, to the
  // CQ thread, and every later frame of the call goes behind it.
  struct OutgoingFrame {
    const char* what;  // for the log, should it not be sent
    codec::FrameType type;
    std::string bytes;         // a metadata frame's payload
    grpc::ByteBuffer message;  // kMessage
    uint16_t flags = 0;
    uint64_t aux = 0;  // kWindowUpdate: the credit
    std::optional<PreparedFrame> prepared;
  };
  // A core op's completion (core_call.h): any thread, never waits.
  class OpDone : public CoreCall::Completion {
   public:
    OpDone(InjectedCall* call, Op op) : call_(call), op_(op) {}
    void Run(bool ok) override;

   private:
    InjectedCall* const call_;
    const Op op_;
  };

  // Unary: the in-process call completed, on whichever thread completed it.
  void OnUnaryDone(bool ok);
  // Queues `op` to start after unlocking.
  void QueueOpLocked(OpStart op, CoreCall::Slices message = {});
  // After any change that may have queued ops: the reference that keeps this
  // call alive while StartQueuedOps (which the caller runs after unlocking)
  // starts them; null when there are none or another thread is starting
  // them already (it starts these too).
  std::shared_ptr<InjectedCall> TakeOpStarterLocked();
  void StartQueuedOps();
  void StartOp(QueuedOp& op);
  // False when the headers are malformed (status_ then says why).
  bool StartLocked(const shm::ReceivedMessage& headers);
  // Unary: the request and half-close are in; prepares the call and queues
  // its one batch. False when there is no request (status_ then says why).
  bool PrepareUnaryLocked();
  // Unary: ends the call before it started (cancel, gone client).
  bool FinishUnstartedLocked(grpc::StatusCode code, const char* why);
  void MaybeWriteLocked();
  // Streams: reads the handler's next response. A response read while the
  // client's window is full is held (and no further read is made) until a
  // kWindowUpdate makes room or the call is cancelled.
  void ReadNextResponseLocked();
  void SendResponseLocked(grpc::ByteBuffer* response, bool on_cq_thread);
  // Sends `frame` to the client after any deferred ones: at once, or left
  // to the CQ thread (see OutgoingFrame); on the CQ thread, waiting for
  // room until SendDeadline().
  void SendToClientLocked(OutgoingFrame frame, bool on_cq_thread);
  // CQ thread: sends the deferred frames, waiting for room; the first that
  // is not sent ends the call (OnSendLocked) and the rest are dropped.
  void SendDeferredLocked();
  absl::Status SendWaitingLocked(OutgoingFrame& frame);
  void DropDeferredLocked();
  // Streams, not on the CQ thread: the status at once if nothing is
  // deferred and the ring has room; else the CQ thread sends it (kSendStatus).
  void SendStreamStatusLocked();
  // After a frame to the client (`what`, for the log) was sent: a frame that
  // was not ends the call (cancelled; marked stalled if the client's ring
  // stayed full, see client_stalled_).
  void OnSendLocked(absl::string_view what, const absl::Status& sent);
  void CancelLocked();
  // The client cancelled or went away: a unary call not started yet is
  // finished CANCELLED (`why`), and true says its status is still to be
  // sent; anything started is cancelled.
  bool CancelForClientLocked(const char* why);
  // A response is held for the client's window: at the call's deadline the
  // call ends (kDeadline), as over HTTP/2, where the server ends a stream
  // at its deadline whether or not its client reads. Without this the call
  // (its in-process call, the held message, its stream slot) stayed until
  // the client read again, i.e. forever for a stopped client.
  void ArmDeadlineLocked();
  // Ends the call because its client broke a limit (logged as `kind`, rate
  // limited): a stream is cancelled and ends with `status`; a unary call,
  // not started yet, is finished with it, and true says its status is
  // still to be sent.
  bool RefuseLocked(const std::string& kind, const grpc::Status& status);
  // Once the status is out and no op is outstanding: marks the call done and
  // hands back the self-reference. The caller runs on_done_ (which takes the
  // owner's lock) after unlocking, so this call's lock and its owner's are
  // never held together, and then drops the reference.
  std::shared_ptr<InjectedCall> TakeIfDoneLocked();
  // Whether the client awaits an answer (Session::AddBusyStream): a unary
  // call from its headers until it is done; a stream from a request the
  // client sent until the handler's next response goes out, or the call is
  // done. So a ping-pong stream counts like a unary call, an idle one not.
  void SetBusyLocked(bool busy);
  void SendStatusAndFinish();
  // Unary: initial metadata and (if OK) the response, before the status.
  void SendUnaryReplyLocked();
  // Unary, on whichever thread completed the call: the whole reply
  // (initial metadata, response, status) at once if the ring has room now,
  // without waiting. False when it did not go out: unary_reply_ then holds
  // the frames prepared for it (empty when they could not be), which the
  // CQ thread sends (kSendReply).
  bool TrySendUnaryReplyLocked();
  // CQ thread (kSendReply): sends what TrySendUnaryReplyLocked could not,
  // waiting for room as any send from this thread does.
  void SendHeldUnaryReplyLocked();
  // The status frame's content: status_ and the handler's trailing
  // metadata.
  codec::CallStatus EncodableStatus() const;
  // How long a send to the client may wait for a ring slot.
  absl::Time SendDeadline() const;
  // Sets `alarm` to go off at once on the CQ thread with `tag`.
  void AlarmNowLocked(std::unique_ptr<grpc::Alarm>* alarm, Tag* tag);

  const std::shared_ptr<Session> session_;
  const uint64_t stream_id_;
  grpc::CompletionQueue* const cq_;
  const CoreTarget core_;
  std::function<void(uint64_t)> on_done_;

  Tag resume_tag_{this, Op::kResumeResponses};
  Tag status_tag_{this, Op::kSendStatus};
  Tag deadline_tag_{this, Op::kDeadline};
  Tag reply_tag_{this, Op::kSendReply};
  Tag deferred_tag_{this, Op::kSendDeferred};
  OpDone start_done_{this, Op::kStart};
  OpDone metadata_done_{this, Op::kInitialMetadata};
  OpDone read_done_{this, Op::kRead};
  OpDone write_done_{this, Op::kWrite};
  OpDone finish_done_{this, Op::kFinish};
  OpDone unary_done_{this, Op::kUnaryDone};

  std::mutex mu_;
  bool headers_seen_ = false;
  bool unary_ = false;
  std::unique_ptr<CoreCall> core_call_;  // once started
  QueuedOps ops_to_start_;
  bool starting_ops_ = false;  // a thread is in StartQueuedOps
  // A vector, not a deque: it is rarely used, and an empty deque costs two
  // heap allocations per call.
  std::vector<OutgoingFrame> deferred_;
  bool deferred_pending_ = false;  // deferred_alarm_ is set
  std::unique_ptr<grpc::Alarm> deferred_alarm_;
  // Unary fast path.
  std::string method_;
  absl::Time deadline_ = absl::InfiniteFuture();  // the client's, if any
  bool have_unary_request_ = false;
  InboundMessage unary_request_;
  std::string authority_;  // the client's, if any
  std::vector<std::pair<std::string, std::string>> unary_metadata_;
  // See TrySendUnaryReplyLocked: at most initial metadata, message, status.
  // Kept apart from deferred_ because a unary reply fails differently: it
  // goes all or nothing, and a reply that cannot go out becomes the status
  // the client sees (RESOURCE_EXHAUSTED, SendHeldUnaryReplyLocked), while a
  // stream frame that cannot go out cancels the call (OnSendLocked).
  absl::InlinedVector<PreparedFrame, 3> unary_reply_;
  std::shared_ptr<InjectedCall> self_;  // alive until done
  int outstanding_ops_ = 0;
  bool started_ = false;
  bool writing_ = false;
  bool half_closed_ = false;  // client sent kHalfClose
  bool writes_done_sent_ = false;
  bool write_failed_ = false;
  bool finished_ = false;  // Finish completed (or never started)
  bool status_sent_ = false;
  bool done_ = false;
  MessageAssembler assembler_;           // chunks of a chained request
  std::deque<InboundMessage> requests_;  // not yet written
  uint64_t writing_bytes_ = 0;           // the request being written
  bool writing_sender_waits_ = false;    // it filled the client's window
  SendWindow send_window_;               // responses to the client
  ReceiveWindow receive_window_;         // requests from the client
  grpc::ByteBuffer held_response_;       // read, waiting for the client's room
  bool holding_response_ = false;
  bool resume_pending_ = false;  // resume_alarm_ is set
  std::unique_ptr<grpc::Alarm> resume_alarm_;
  std::unique_ptr<grpc::Alarm> status_alarm_;  // see OnFrame, kFinish
  std::unique_ptr<grpc::Alarm> reply_alarm_;   // see OnUnaryDone
  // Set at the call's deadline once a response is held (ArmDeadlineLocked);
  // cancelled when the call finishes first.
  std::unique_ptr<grpc::Alarm> deadline_alarm_;
  bool deadline_alarm_pending_ = false;
  bool cancelled_ = false;
  // A send to the client waited until SendDeadline() for ring space (the
  // client stopped reading): the status is posted, not waited for again.
  bool client_stalled_ = false;
  // A frame to the client was not sent (OnSendLocked): the call is being
  // cancelled, and later frames (responses already read, credits) are
  // dropped rather than each waiting for room again.
  bool send_failed_ = false;
  // The status a stream ends with instead of gRPC's CANCELLED (applied when
  // Finish completes) once this side ended it: it refused a request (larger
  // than Session::max_received_message_bytes), or a response was still held
  // at the call's deadline.
  std::optional<grpc::Status> status_override_;
  StreamSlot stream_slot_;     // until the status goes out or a kCancel
  bool busy_ = false;          // see SetBusyLocked
  grpc::ByteBuffer response_;  // the unary reply
  grpc::Status status_;
};

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_SERVER_CALL_H_
