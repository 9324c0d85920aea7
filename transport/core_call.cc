#include "transport/core_call.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include <chrono>

#include "absl/strings/string_view.h"
#include "grpcpp/support/time.h"
#include "grpcpp/version_info.h"

// gRPC 1.51's Channel names grpc::testing::ChannelTestPeer a friend without
// defining it anywhere (not in libgrpc++, not in its headers): the class
// below is that definition, and only reads the core channel. Another gRPC
// version fails to build here until it is checked against its channel.h.
static_assert(GRPC_CPP_VERSION_MAJOR == 1 && GRPC_CPP_VERSION_MINOR == 51,
              "check grpc::testing::ChannelTestPeer against this gRPC's "
              "channel.h");

namespace grpc::testing {

class ChannelTestPeer {
 public:
  static grpc_channel* CoreChannel(grpc::Channel& channel) {
    return channel.c_channel_;
  }
};

}  // namespace grpc::testing

namespace shmgrpc::transport {
namespace {

absl::string_view View(const grpc_slice& slice) {
  return absl::string_view(
      reinterpret_cast<const char*>(GRPC_SLICE_START_PTR(slice)),
      GRPC_SLICE_LENGTH(slice));
}

codec::Metadata Copy(const grpc_metadata_array& array) {
  codec::Metadata metadata;
  metadata.reserve(array.count);
  for (size_t i = 0; i < array.count; ++i) {
    metadata.emplace_back(std::string(View(array.metadata[i].key)),
                          std::string(View(array.metadata[i].value)));
  }
  return metadata;
}

// Converted as ClientContext::set_deadline converts one: a handler sees
// its deadline as a std::chrono::system_clock time point (int64
// nanoseconds), so the largest one, and anything past it, is no deadline
// (one converted as it is overflowed in the handler's
// ServerContext::deadline(): UBSan, ProtocolTest.PastAndExtremeDeadlines).
gpr_timespec GprDeadline(absl::Time deadline) {
  return grpc::TimePoint<std::chrono::system_clock::time_point>(
             absl::ToChronoTime(deadline))
      .raw_time();
}

// Makes `functor` run `run` with each completion, inline on the completing
// thread if `inlineable`.
void InitFunctor(grpc_completion_queue_functor* functor,
                 void (*run)(grpc_completion_queue_functor*, int),
                 bool inlineable) {
  functor->functor_run = run;
  functor->inlineable = inlineable ? 1 : 0;
  functor->internal_success = 0;
  functor->internal_next = nullptr;
}

// A byte buffer over `slices`, whose references it takes over.
grpc_byte_buffer* TakeIntoByteBuffer(CoreCall::Slices& slices) {
  grpc_byte_buffer* buffer =
      grpc_raw_byte_buffer_create(slices.data(), slices.size());
  for (grpc_slice& slice : slices) grpc_slice_unref(slice);
  return buffer;
}

}  // namespace

grpc_channel* CoreChannelOf(grpc::Channel& channel) {
  return grpc::testing::ChannelTestPeer::CoreChannel(channel);
}

CoreCallbackQueue::CoreCallbackQueue() {
  InitFunctor(&shutdown_functor_, &CoreCallbackQueue::OnShutdown,
              /*inlineable=*/false);
  shutdown_functor_.queue = this;
  cq_ = grpc_completion_queue_create_for_callback(&shutdown_functor_, nullptr);
}

void CoreCallbackQueue::OnShutdown(grpc_completion_queue_functor* functor,
                                   int /*ok*/) {
  CoreCallbackQueue* queue = static_cast<ShutdownFunctor*>(functor)->queue;
  std::lock_guard<std::mutex> lock(queue->mu_);
  queue->shut_down_ = true;
  queue->shut_down_cv_.notify_all();
}

CoreCallbackQueue::~CoreCallbackQueue() {
  grpc_completion_queue_shutdown(cq_);
  {
    std::unique_lock<std::mutex> lock(mu_);
    shut_down_cv_.wait(lock, [this] { return shut_down_; });
  }
  grpc_completion_queue_destroy(cq_);
}

CoreCall::Completion::Completion() {
  InitFunctor(this, &Completion::Dispatch, /*inlineable=*/true);
}

void CoreCall::Completion::Dispatch(grpc_completion_queue_functor* functor,
                                    int ok) {
  static_cast<Completion*>(functor)->Run(ok != 0);
}

CoreCall::OpCompletion::OpCompletion(CoreCall* call,
                                     void (*run)(grpc_completion_queue_functor*,
                                                 int))
    : call(call) {
  InitFunctor(this, run, /*inlineable=*/true);
}

CoreCall::CoreCall(grpc_channel* channel, grpc_completion_queue* cq,
                   const std::string& method, const std::string& authority,
                   absl::Time deadline,
                   std::vector<std::pair<std::string, std::string>> metadata)
    : metadata_strings_(std::move(metadata)) {
  grpc_metadata_array_init(&initial_metadata_);
  grpc_metadata_array_init(&trailing_metadata_);
  status_message_ = grpc_empty_slice();
  // gRPC takes its own references to the method and host; the metadata
  // slices point into metadata_strings_, which outlive the call.
  const grpc_slice method_slice =
      grpc_slice_from_copied_buffer(method.data(), method.size());
  const grpc_slice host_slice =
      grpc_slice_from_copied_buffer(authority.data(), authority.size());
  call_ = grpc_channel_create_call(channel, /*parent_call=*/nullptr,
                                   GRPC_PROPAGATE_DEFAULTS, cq, method_slice,
                                   authority.empty() ? nullptr : &host_slice,
                                   GprDeadline(deadline), nullptr);
  grpc_slice_unref(method_slice);
  grpc_slice_unref(host_slice);
  metadata_.reserve(metadata_strings_.size());
  for (const auto& [key, value] : metadata_strings_) {
    grpc_metadata entry = {};
    entry.key = grpc_slice_from_static_buffer(key.data(), key.size());
    entry.value = grpc_slice_from_static_buffer(value.data(), value.size());
    metadata_.push_back(entry);
  }
}

CoreCall::~CoreCall() {
  if (request_ != nullptr) grpc_byte_buffer_destroy(request_);
  if (response_ != nullptr) grpc_byte_buffer_destroy(response_);
  grpc_metadata_array_destroy(&initial_metadata_);
  grpc_metadata_array_destroy(&trailing_metadata_);
  grpc_slice_unref(status_message_);
  grpc_call_unref(call_);
}

void CoreCall::StartBatch(const grpc_op* ops, size_t count,
                          grpc_completion_queue_functor* tag,
                          Completion* done) {
  if (grpc_call_start_batch(call_, ops, count, tag, nullptr) == GRPC_CALL_OK) {
    return;
  }
  // Only a misuse of this class gets here (an op started twice): say so as
  // the call's status rather than leave `done` never run.
  status_code_ = GRPC_STATUS_INTERNAL;
  grpc_slice_unref(status_message_);
  status_message_ = grpc_slice_from_copied_string(
      "shm injector: grpc_call_start_batch refused an op");
  done->Run(false);
}

void CoreCall::StartUnary(Slices request, Completion* done) {
  request_ = TakeIntoByteBuffer(request);
  grpc_op ops[6] = {};
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].data.send_initial_metadata.count = metadata_.size();
  ops[0].data.send_initial_metadata.metadata = metadata_.data();
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = request_;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial_metadata_;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &response_;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &trailing_metadata_;
  ops[5].data.recv_status_on_client.status = &status_code_;
  ops[5].data.recv_status_on_client.status_details = &status_message_;
  // The tag is the functor itself: Completion's base, not its first byte
  // (its vtable pointer comes first).
  StartBatch(ops, 6, done, done);
}

void CoreCall::StartStream(Completion* done) {
  grpc_op op = {};
  op.op = GRPC_OP_SEND_INITIAL_METADATA;
  op.data.send_initial_metadata.count = metadata_.size();
  op.data.send_initial_metadata.metadata = metadata_.data();
  StartBatch(&op, 1, done, done);
}

void CoreCall::ReadInitialMetadata(Completion* done) {
  grpc_op op = {};
  op.op = GRPC_OP_RECV_INITIAL_METADATA;
  op.data.recv_initial_metadata.recv_initial_metadata = &initial_metadata_;
  StartBatch(&op, 1, done, done);
}

void CoreCall::Write(Slices message, Completion* done) {
  request_ = TakeIntoByteBuffer(message);
  written_.done = done;
  grpc_op op = {};
  op.op = GRPC_OP_SEND_MESSAGE;
  op.data.send_message.send_message = request_;
  StartBatch(&op, 1, &written_, done);
}

void CoreCall::OnWritten(grpc_completion_queue_functor* functor, int ok) {
  auto* op = static_cast<OpCompletion*>(functor);
  // gRPC holds its own references while it needs the message; ours go now,
  // so that blocks the handler has parsed go back to the client.
  grpc_byte_buffer_destroy(op->call->request_);
  op->call->request_ = nullptr;
  op->done->Run(ok != 0);
}

void CoreCall::WritesDone(Completion* done) {
  grpc_op op = {};
  op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  StartBatch(&op, 1, done, done);
}

void CoreCall::Read(Completion* done) {
  if (response_ != nullptr) {  // not taken
    grpc_byte_buffer_destroy(response_);
    response_ = nullptr;
  }
  read_.done = done;
  grpc_op op = {};
  op.op = GRPC_OP_RECV_MESSAGE;
  op.data.recv_message.recv_message = &response_;
  StartBatch(&op, 1, &read_, done);
}

void CoreCall::OnRead(grpc_completion_queue_functor* functor, int ok) {
  auto* op = static_cast<OpCompletion*>(functor);
  // The core API completes a read at the end of the stream successfully,
  // without a message; the C++ API (and our caller) calls that not ok.
  op->done->Run(ok != 0 && op->call->response_ != nullptr);
}

void CoreCall::Finish(Completion* done) {
  grpc_op op = {};
  op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  op.data.recv_status_on_client.trailing_metadata = &trailing_metadata_;
  op.data.recv_status_on_client.status = &status_code_;
  op.data.recv_status_on_client.status_details = &status_message_;
  StartBatch(&op, 1, done, done);
}

void CoreCall::Cancel() { grpc_call_cancel(call_, nullptr); }

codec::Metadata CoreCall::InitialMetadata() const {
  return Copy(initial_metadata_);
}

codec::Metadata CoreCall::TrailingMetadata() const {
  return Copy(trailing_metadata_);
}

grpc::Status CoreCall::status() const {
  std::string details;
  for (size_t i = 0; i < trailing_metadata_.count; ++i) {
    if (View(trailing_metadata_.metadata[i].key) == "grpc-status-details-bin") {
      details = std::string(View(trailing_metadata_.metadata[i].value));
    }
  }
  return grpc::Status(static_cast<grpc::StatusCode>(status_code_),
                      std::string(View(status_message_)), std::move(details));
}

grpc::ByteBuffer CoreCall::TakeResponse() {
  if (response_ == nullptr) return grpc::ByteBuffer();
  absl::InlinedVector<grpc::Slice, 1> slices;
  grpc_byte_buffer_reader reader;
  if (grpc_byte_buffer_reader_init(&reader, response_)) {
    grpc_slice slice;
    while (grpc_byte_buffer_reader_next(&reader, &slice)) {
      slices.emplace_back(slice, grpc::Slice::STEAL_REF);
    }
    grpc_byte_buffer_reader_destroy(&reader);
  }
  grpc_byte_buffer_destroy(response_);
  response_ = nullptr;
  return grpc::ByteBuffer(slices.data(), slices.size());
}

}  // namespace shmgrpc::transport
