// CoreCall: a call into gRPC made with its core API, whose completions run
// on the thread that completes them.
//
// The injector makes its calls into the in-process channel this way. With
// the C++ completion-queue API every completion wakes a completion-queue
// thread, one more thread hop per unary call and per stream message (~20 us
// on this VM's halting vCPUs); an inlineable callback functor instead runs
// on the thread that completed the op, which for an in-process call is
// usually the handler's own (its write completes our read, its read our
// write, its status our call) or the thread that started the op (when the
// other end was already waiting). gRPC's C++ callback API cannot do this:
// it marks its own functors not inlineable. So a completion must not wait
// for anything that may take long: it may run on a handler's thread, on
// gRPC's timer or executor threads, or inside the call (Start*, Write,
// Read, Cancel...) that started or cancelled the op, on the caller's
// thread, which must therefore hold no lock the completion takes.
//
// gRPC 1.51 keeps a grpc::Channel's core channel private; CoreChannelOf
// reads it through the friend class gRPC declares for its tests and never
// defines, checked against the gRPC version at build time (as
// client_context_internals.h does).
#ifndef SHMGRPC_TRANSPORT_CORE_CALL_H_
#define SHMGRPC_TRANSPORT_CORE_CALL_H_

#include <condition_variable>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/time/time.h"
#include "codec/call_frames.h"
#include "grpc/grpc.h"
#include "grpcpp/channel.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/status.h"

namespace shmgrpc::transport {

// The core channel of `channel`, which keeps owning it.
grpc_channel* CoreChannelOf(grpc::Channel& channel);

// A callback completion queue for core calls whose functors do the work. The
// destructor shuts it down and waits until every op started on it has
// completed (their functors have run).
class CoreCallbackQueue {
 public:
  CoreCallbackQueue();
  ~CoreCallbackQueue();
  CoreCallbackQueue(const CoreCallbackQueue&) = delete;
  CoreCallbackQueue& operator=(const CoreCallbackQueue&) = delete;

  grpc_completion_queue* get() const { return cq_; }

 private:
  struct ShutdownFunctor : grpc_completion_queue_functor {
    CoreCallbackQueue* queue;
  };
  static void OnShutdown(grpc_completion_queue_functor* functor, int ok);

  ShutdownFunctor shutdown_functor_;
  grpc_completion_queue* cq_;
  std::mutex mu_;
  std::condition_variable shut_down_cv_;
  bool shut_down_ = false;
};

class CoreCall {
 public:
  // A message's slices: one for a message in one block (the usual case),
  // without a heap allocation.
  using Slices = absl::InlinedVector<grpc_slice, 1>;
  // Runs `Run(ok)` once per op it is given to, inline on the completing
  // thread (see the top of this file). It must outlive that op.
  class Completion : public grpc_completion_queue_functor {
   public:
    Completion();
    virtual ~Completion() = default;
    virtual void Run(bool ok) = 0;

   private:
    static void Dispatch(grpc_completion_queue_functor* functor, int ok);
  };

  // `authority` empty: the channel's. `deadline` InfiniteFuture: none.
  // `metadata` keys must be legal (codec::CheckMetadataEntry): gRPC aborts
  // the process on illegal ones.
  CoreCall(grpc_channel* channel, grpc_completion_queue* cq,
           const std::string& method, const std::string& authority,
           absl::Time deadline,
           std::vector<std::pair<std::string, std::string>> metadata);
  // Only once every op started has completed.
  ~CoreCall();
  CoreCall(const CoreCall&) = delete;
  CoreCall& operator=(const CoreCall&) = delete;

  // A unary call: sends the metadata, the request (slices, taken:
  // unreferenced here) and the half-close, and asks for the reply and
  // status, as one batch. Once only, and no other op but Cancel.
  void StartUnary(Slices request, Completion* done);

  // A stream: StartStream first (sends the metadata), then the others, each
  // with at most one op of its kind outstanding (as gRPC requires), `done`
  // running with what the C++ API's op of the same name would say.
  void StartStream(Completion* done);
  void ReadInitialMetadata(Completion* done);
  // `message` taken as for StartUnary; its slices are let go as the write
  // completes.
  void Write(Slices message, Completion* done);
  void WritesDone(Completion* done);
  // ok false once no message will come (the end of the stream or a failed
  // call); else TakeResponse() has it.
  void Read(Completion* done);
  // The status; start it once a Read said no more messages.
  void Finish(Completion* done);

  // Ends the call CANCELLED unless it has completed. Any thread holding no
  // lock a completion takes: the ops under way complete inside it.
  void Cancel();

  // After the op that received them completed: what the server sent.
  // Status details (grpc-status-details-bin) are read from the trailing
  // metadata, where they also stay, as gRPC's C++ API does.
  codec::Metadata InitialMetadata() const;
  codec::Metadata TrailingMetadata() const;
  grpc::Status status() const;
  // The reply, or the message the last Read got (empty when none came),
  // sharing its slices.
  grpc::ByteBuffer TakeResponse();

 private:
  // Forwards a stream op's completion after doing what the op needs done
  // on it (see Read and Write).
  struct OpCompletion : grpc_completion_queue_functor {
    OpCompletion(CoreCall* call,
                 void (*run)(grpc_completion_queue_functor*, int));
    CoreCall* const call;
    Completion* done = nullptr;
  };
  static void OnWritten(grpc_completion_queue_functor* functor, int ok);
  static void OnRead(grpc_completion_queue_functor* functor, int ok);
  // Starts `ops` as one batch with `tag`; a batch gRPC refuses (a misuse of
  // this class) completes `done` with ok false and an INTERNAL status.
  void StartBatch(const grpc_op* ops, size_t count,
                  grpc_completion_queue_functor* tag, Completion* done);

  grpc_call* call_;
  std::vector<std::pair<std::string, std::string>> metadata_strings_;
  std::vector<grpc_metadata> metadata_;
  grpc_byte_buffer* request_ = nullptr;  // unary: the request; stream: a write
  grpc_metadata_array initial_metadata_;
  grpc_metadata_array trailing_metadata_;
  grpc_byte_buffer* response_ = nullptr;
  grpc_status_code status_code_ = GRPC_STATUS_UNKNOWN;
  grpc_slice status_message_;
  OpCompletion written_{this, &CoreCall::OnWritten};
  OpCompletion read_{this, &CoreCall::OnRead};
};

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_CORE_CALL_H_
