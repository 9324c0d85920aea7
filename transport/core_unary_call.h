// CoreUnaryCall: one unary call made with gRPC's core API, whose completion
// runs on the thread that completes it.
//
// The injector makes its unary calls into the in-process channel this way.
// With the C++ completion-queue API a finished call wakes a completion-queue
// thread, one more thread hop per call (~20 us on this VM's halting vCPUs);
// an inlineable callback functor instead runs on the thread that finished
// the call, which for an in-process call is the handler's own thread (its
// status batch completes both ends). gRPC's C++ callback API cannot do this:
// it marks its own functors not inlineable. So `done` must never block: it
// may run on a handler's thread, on gRPC's timer or executor threads, or
// inside Start() on the caller's.
//
// gRPC 1.51 keeps a grpc::Channel's core channel private; CoreChannelOf
// reads it through the friend class gRPC declares for its tests and never
// defines, checked against the gRPC version at build time (as
// client_context_internals.h does).
#ifndef SHMGRPC_TRANSPORT_CORE_UNARY_CALL_H_
#define SHMGRPC_TRANSPORT_CORE_UNARY_CALL_H_

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

class CoreUnaryCall {
 public:
  // A message's slices: one for a message in one block (the usual case),
  // without a heap allocation.
  using Slices = absl::InlinedVector<grpc_slice, 1>;
  // Runs `Run(ok)` once when the call completes, inline on the completing
  // thread (see the top of this file).
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
  CoreUnaryCall(grpc_channel* channel, grpc_completion_queue* cq,
                const std::string& method, const std::string& authority,
                absl::Time deadline,
                std::vector<std::pair<std::string, std::string>> metadata);
  ~CoreUnaryCall();
  CoreUnaryCall(const CoreUnaryCall&) = delete;
  CoreUnaryCall& operator=(const CoreUnaryCall&) = delete;

  // Sends the request (slices, taken: unreferenced here) and the
  // half-close, and asks for the reply and status, as one batch; `done`
  // (which must outlive the call's completion) runs when it completes.
  // Once only.
  void Start(Slices request, Completion* done);
  // Ends the call CANCELLED unless it has completed. Any thread.
  void Cancel();

  // After `done` ran: what the server sent. Status details
  // (grpc-status-details-bin) are read from the trailing metadata, where
  // they also stay, as gRPC's C++ API does.
  codec::Metadata InitialMetadata() const;
  codec::Metadata TrailingMetadata() const;
  grpc::Status status() const;
  // The reply (empty when none came), sharing its slices.
  grpc::ByteBuffer TakeResponse();

 private:
  grpc_call* call_;
  std::vector<std::pair<std::string, std::string>> metadata_strings_;
  std::vector<grpc_metadata> metadata_;
  grpc_byte_buffer* request_ = nullptr;
  grpc_metadata_array initial_metadata_;
  grpc_metadata_array trailing_metadata_;
  grpc_byte_buffer* response_ = nullptr;
  grpc_status_code status_code_ = GRPC_STATUS_UNKNOWN;
  grpc_slice status_message_;
};

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_CORE_UNARY_CALL_H_
