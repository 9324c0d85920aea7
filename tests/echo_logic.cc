#include "tests/echo_logic.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tests/peer_process.h"

namespace shmgrpc::test {
namespace {

std::atomic<int> cancellations_seen{0};
std::atomic<int> handlers_hanging{0};

// Calls so far that named `key` (EchoRequest::attempt_key), this one counted.
int CountAttempt(const std::string& key) {
  static std::mutex mu;
  static auto* attempts = new std::map<std::string, int>();
  std::lock_guard<std::mutex> lock(mu);
  return ++(*attempts)[key];
}

std::string PayloadFor(size_t size, int64_t seq) {
  std::string payload(size, '\0');
  testing::FillPayload(reinterpret_cast<uint8_t*>(payload.data()), size,
                       static_cast<uint64_t>(seq));
  return payload;
}

uint64_t ChecksumOf(const std::string& bytes) {
  return testing::Checksum(reinterpret_cast<const uint8_t*>(bytes.data()),
                           bytes.size());
}

}  // namespace

void FillRequest(EchoRequest* request, size_t size, int64_t seq) {
  request->set_payload(PayloadFor(size, seq));
  request->set_seq(seq);
  request->set_checksum(ChecksumOf(request->payload()));
}

bool PayloadIntact(const EchoRequest& request) {
  return ChecksumOf(request.payload()) == request.checksum();
}

bool PayloadIntact(const EchoResponse& response) {
  return ChecksumOf(response.payload()) == response.checksum();
}

EchoResponse ReplyFor(grpc::ServerContextBase* context,
                      const EchoRequest& request, int index) {
  EchoResponse response;
  if (request.reply_bytes() > 0) {
    response.set_payload(PayloadFor(request.reply_bytes(), request.seq()));
    response.set_checksum(ChecksumOf(response.payload()));
  } else {
    // The echo carries the client's own checksum, so the client's check of
    // the reply covers the request's way too (a checksum of this copy would
    // vouch only for the reply's way).
    response.set_payload(request.payload());
    response.set_checksum(request.checksum());
  }
  response.set_seq(request.seq() + index);
  for (const auto& [key, value] : context->client_metadata()) {
    const std::string k(key.data(), key.size());
    if (absl::StartsWith(k, ":")) continue;
    if (request.add_metadata()) {
      (*response.mutable_request_metadata())[k] =
          std::string(value.data(), value.size());
    }
    if (k == "x-shmgrpc-peer-pid") {
      response.set_peer_pid(std::string(value.data(), value.size()));
    }
  }
  const std::shared_ptr<const grpc::AuthContext> auth = context->auth_context();
  if (auth != nullptr) {
    for (const grpc::string_ref& type :
         auth->FindPropertyValues("transport_security_type")) {
      response.set_transport_security_type(
          std::string(type.data(), type.size()));
    }
  }
  response.set_peer(context->peer());
  const grpc::string_ref authority = context->ExperimentalGetAuthority();
  response.set_authority(std::string(authority.data(), authority.size()));
  const auto deadline = context->deadline();
  response.set_deadline_remaining_ms(
      deadline == std::chrono::system_clock::time_point::max()
          ? -1
          : std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::system_clock::now())
                .count());
  response.set_cancellations_seen(cancellations_seen.load());
  return response;
}

int CancellationsSeen() { return cancellations_seen.load(); }
void CountCancellation() { cancellations_seen.fetch_add(1); }
int HandlersHanging() { return handlers_hanging.load(); }
void AddHandlersHanging(int delta) { handlers_hanging.fetch_add(delta); }

grpc::Status HandleUnary(grpc::ServerContextBase* context,
                         const EchoRequest& request, EchoResponse* response) {
  if (request.hang()) {
    AddHandlersHanging(1);
    for (int i = 0; i < 30000 && !context->IsCancelled(); ++i) usleep(1000);
    if (context->IsCancelled()) cancellations_seen.fetch_add(1);
    AddHandlersHanging(-1);
    return grpc::Status(grpc::StatusCode::CANCELLED, "handler saw cancel");
  }
  if (request.server_cancels()) {
    context->TryCancel();
    return grpc::Status::OK;  // what a cancelled call's client never sees
  }
  if (request.delay_ms() > 0) usleep(request.delay_ms() * 1000);
  int attempts_seen = 0;
  if (!request.attempt_key().empty()) {
    attempts_seen = CountAttempt(request.attempt_key());
    if (attempts_seen <= request.fail_attempts()) {
      if (request.add_metadata()) {
        context->AddInitialMetadata("x-echo-initial", "initial-value");
      }
      if (!request.retry_pushback_ms().empty()) {
        context->AddTrailingMetadata("grpc-retry-pushback-ms",
                                     request.retry_pushback_ms());
      }
      return grpc::Status(
          request.error_code() != 0
              ? static_cast<grpc::StatusCode>(request.error_code())
              : grpc::StatusCode::UNAVAILABLE,
          absl::StrCat("attempt ", attempts_seen, " fails"));
    }
  }
  if (request.error_code() != 0) {
    return grpc::Status(static_cast<grpc::StatusCode>(request.error_code()),
                        request.error_message(), request.error_details());
  }
  if (request.add_metadata()) {
    context->AddInitialMetadata("x-echo-initial", "initial-value");
    context->AddInitialMetadata("x-echo-initial-bin", std::string("\0\1\2", 3));
    context->AddTrailingMetadata("x-echo-trailing", "trailing-value");
    context->AddTrailingMetadata("x-echo-trailing-bin",
                                 std::string("\xff\0\xfe", 3));
  }
  if (request.compress_reply()) {
    context->set_compression_algorithm(GRPC_COMPRESS_GZIP);
  }
  if (request.reply_initial_metadata_bytes() > 0) {
    context->AddInitialMetadata(
        "x-big-initial",
        std::string(request.reply_initial_metadata_bytes(), 'i'));
  }
  if (request.reply_trailing_metadata_bytes() > 0) {
    context->AddTrailingMetadata(
        "x-big-trailing",
        std::string(request.reply_trailing_metadata_bytes(), 't'));
  }
  *response = ReplyFor(context, request, 0);
  response->set_attempts_seen(attempts_seen);
  return grpc::Status::OK;
}

// ---- async style
// -------------------------------------------------------------

namespace {

// What the completion queue's tags point to.
class AsyncHandler {
 public:
  virtual ~AsyncHandler() = default;
  virtual void OnEvent(bool ok) = 0;
};

// One outstanding Unary request on the CQ; re-arms itself when it gets one.
// A `hang` request is not answered: an async handler must not block its CQ
// thread (and IsCancelled() is only valid once AsyncNotifyWhenDone's tag has
// come back), so it waits for that tag, counts a cancellation and finishes.
class UnaryHandler : public AsyncHandler {
 public:
  UnaryHandler(AsyncEchoServer::Service* service,
               grpc::ServerCompletionQueue* cq)
      : service_(service), cq_(cq), responder_(&context_), done_(this) {
    context_.AsyncNotifyWhenDone(&done_);
    service_->RequestUnary(&context_, &request_, &responder_, cq_, cq_, this);
  }
  // The request tag, then the finish tag.
  void OnEvent(bool ok) override {
    if (state_ == State::kRequested) {
      if (!ok) {  // shutting down; a call that never started gets no done tag
        delete this;
        return;
      }
      new UnaryHandler(service_, cq_);
      if (request_.hang()) {
        state_ = State::kHanging;
        AddHandlersHanging(1);
        return;
      }
      Finish(HandleUnary(&context_, request_, &response_));
      return;
    }
    finished_ = true;  // the finish tag (ok false: the client went away)
    if (done_seen_) delete this;
  }

 private:
  enum class State { kRequested, kHanging, kFinishing };
  struct DoneTag : AsyncHandler {
    explicit DoneTag(UnaryHandler* handler) : handler(handler) {}
    void OnEvent(bool) override { handler->OnDone(); }
    UnaryHandler* handler;
  };

  void OnDone() {
    done_seen_ = true;
    if (state_ == State::kHanging) {
      AddHandlersHanging(-1);
      if (context_.IsCancelled()) CountCancellation();
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "handler saw cancel"));
      return;
    }
    if (finished_) delete this;
  }
  void Finish(const grpc::Status& status) {
    state_ = State::kFinishing;
    if (status.ok()) {
      responder_.Finish(response_, status, this);
    } else {
      responder_.FinishWithError(status, this);
    }
  }

  AsyncEchoServer::Service* service_;
  grpc::ServerCompletionQueue* cq_;
  grpc::ServerContext context_;
  EchoRequest request_;
  EchoResponse response_;
  grpc::ServerAsyncResponseWriter<EchoResponse> responder_;
  DoneTag done_;
  State state_ = State::kRequested;
  bool finished_ = false;
  bool done_seen_ = false;
};

// One Bidi stream: echoes each request as it comes (read, write, read, ...),
// then finishes OK; re-arms a new handler once it has a call.
class BidiHandler : public AsyncHandler {
 public:
  BidiHandler(AsyncEchoServer::Service* service,
              grpc::ServerCompletionQueue* cq)
      : service_(service), cq_(cq), stream_(&context_) {
    service_->RequestBidi(&context_, &stream_, cq_, cq_, this);
  }
  void OnEvent(bool ok) override {
    switch (state_) {
      case State::kRequested:
        if (!ok) {  // shutting down
          delete this;
          return;
        }
        new BidiHandler(service_, cq_);
        Read();
        return;
      case State::kReading:
        if (!ok) {  // the client half-closed (or went away)
          Finish(grpc::Status::OK);
          return;
        }
        if (!PayloadIntact(request_)) {
          Finish(grpc::Status(grpc::StatusCode::DATA_LOSS, "bad checksum"));
          return;
        }
        response_ = ReplyFor(&context_, request_, 0);
        response_.set_messages_seen(++seen_);
        state_ = State::kWriting;
        stream_.Write(response_, this);
        return;
      case State::kWriting:
        if (!ok) {
          Finish(grpc::Status::OK);
          return;
        }
        Read();
        return;
      case State::kFinishing:
        delete this;
        return;
    }
  }

 private:
  enum class State { kRequested, kReading, kWriting, kFinishing };
  void Read() {
    state_ = State::kReading;
    stream_.Read(&request_, this);
  }
  void Finish(const grpc::Status& status) {
    state_ = State::kFinishing;
    stream_.Finish(status, this);
  }

  AsyncEchoServer::Service* service_;
  grpc::ServerCompletionQueue* cq_;
  grpc::ServerContext context_;
  grpc::ServerAsyncReaderWriter<EchoResponse, EchoRequest> stream_;
  State state_ = State::kRequested;
  EchoRequest request_;
  EchoResponse response_;
  int seen_ = 0;
};

}  // namespace

AsyncEchoServer::AsyncEchoServer(grpc::ServerBuilder* builder) {
  builder->RegisterService(&service_);
  cq_ = builder->AddCompletionQueue();
}

void AsyncEchoServer::Run() {
  new UnaryHandler(&service_, cq_.get());
  new BidiHandler(&service_, cq_.get());
  thread_ = std::thread([this] {
    void* tag;
    bool ok;
    while (cq_->Next(&tag, &ok)) static_cast<AsyncHandler*>(tag)->OnEvent(ok);
  });
}

void AsyncEchoServer::Stop() {
  cq_->Shutdown();
  if (thread_.joinable()) thread_.join();
}

bool IsEchoStyle(const std::string& style) {
  return style == "sync" || style == "callback" || style == "async";
}

EchoServiceOfStyle::EchoServiceOfStyle(const std::string& style,
                                       grpc::ServerBuilder* builder) {
  if (style == "callback") {
    builder->RegisterService(&callback_service_);
  } else if (style == "async") {
    async_server_ = std::make_unique<AsyncEchoServer>(builder);
  } else {
    builder->RegisterService(&sync_service_);
  }
}

void EchoServiceOfStyle::Run() {
  if (async_server_) async_server_->Run();
}

void EchoServiceOfStyle::Stop() {
  if (async_server_) async_server_->Stop();
}

}  // namespace shmgrpc::test
