// The EchoService behaviour shared by every server style in echo_server.
#ifndef SHMGRPC_TESTS_ECHO_LOGIC_H_
#define SHMGRPC_TESTS_ECHO_LOGIC_H_

#include <unistd.h>

#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "grpcpp/grpcpp.h"
#include "tests/echo.grpc.pb.h"
#include "tests/echo_lite.grpc.pb.h"

namespace shmgrpc::test {

// Unary semantics: hang until cancelled, delay, fail with a given status, or
// answer with ReplyFor() plus initial/trailing metadata when asked.
grpc::Status HandleUnary(grpc::ServerContextBase* context,
                         const EchoRequest& request, EchoResponse* response);

// The reply to one request: payload (echoed with the request's checksum, or
// reply_bytes long with its own), seq + index, and what the server saw
// (metadata, deadline, peer).
EchoResponse ReplyFor(grpc::ServerContextBase* context,
                      const EchoRequest& request, int index);

bool PayloadIntact(const EchoRequest& request);

// Handlers that saw their call cancelled (hang, or a stream cut off).
int CancellationsSeen();
void CountCancellation();
// Hang requests whose handler is holding them now: a test that cancels one
// waits for this first (a call cancelled before its handler ran never
// reaches the handler, which then cannot see the cancel).
int HandlersHanging();
void AddHandlersHanging(int delta);

// Fills a request with `size` payload bytes derived from `seq`.
void FillRequest(EchoRequest* request, size_t size, int64_t seq);
bool PayloadIntact(const EchoResponse& response);

class SyncEchoService : public EchoService::Service {
 public:
  grpc::Status Unary(grpc::ServerContext* context, const EchoRequest* request,
                     EchoResponse* response) override {
    return HandleUnary(context, *request, response);
  }
  grpc::Status ServerStream(grpc::ServerContext* context,
                            const EchoRequest* request,
                            grpc::ServerWriter<EchoResponse>* writer) override {
    if (request->add_metadata()) {  // sent ahead of the replies (and delay)
      context->AddInitialMetadata("x-echo-early", "before-any-reply");
      writer->SendInitialMetadata();
    }
    if (request->delay_ms() > 0) usleep(request->delay_ms() * 1000);
    for (int i = 0; i < request->reply_count(); ++i) {
      EchoResponse response = ReplyFor(context, *request, i);
      if (!writer->Write(response)) break;
    }
    return grpc::Status::OK;
  }
  grpc::Status ClientStream(grpc::ServerContext* context,
                            grpc::ServerReader<EchoRequest>* reader,
                            EchoResponse* response) override {
    EchoRequest request;
    int seen = 0;
    uint64_t combined = 0;
    while (reader->Read(&request)) {
      if (!PayloadIntact(request)) {
        return grpc::Status(grpc::StatusCode::DATA_LOSS, "bad checksum");
      }
      combined = combined * 31 + request.checksum();
      ++seen;
    }
    *response = ReplyFor(context, request, 0);
    response->set_messages_seen(seen);
    response->set_checksum(combined);
    return grpc::Status::OK;
  }
  grpc::Status Bidi(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<EchoResponse, EchoRequest>* stream) override {
    EchoRequest request;
    int seen = 0;
    while (stream->Read(&request)) {
      if (!PayloadIntact(request)) {
        return grpc::Status(grpc::StatusCode::DATA_LOSS, "bad checksum");
      }
      if (request.delay_ms() > 0) usleep(request.delay_ms() * 1000);
      EchoResponse response = ReplyFor(context, request, 0);
      response.set_messages_seen(++seen);
      if (!stream->Write(response)) break;
    }
    if (context->IsCancelled()) CountCancellation();
    return grpc::Status::OK;
  }
};

// The lite echo's method as gRPC names it: what Options::protobuf_methods
// (client) and ArenaReplyInterceptorFactory (server) must list, since the
// descriptor pool does not know lite services.
inline constexpr char kLiteEchoMethod[] =
    "/shmgrpc.test.lite.LiteEchoService/Echo";

// The lite-runtime echo (echo_lite.proto): echoes payload and seq, and
// reports the server-verified caller pid when the call came over shm.
class LiteEchoService final : public lite::LiteEchoService::Service {
 public:
  grpc::Status Echo(grpc::ServerContext* context,
                    const lite::LiteRequest* request,
                    lite::LiteReply* reply) override {
    reply->set_payload(request->payload());
    reply->set_seq(request->seq());
    const auto& metadata = context->client_metadata();
    if (auto it = metadata.find("x-shmgrpc-peer-pid"); it != metadata.end()) {
      reply->set_peer_pid(std::string(it->second.data(), it->second.size()));
    }
    return grpc::Status::OK;
  }
};

class CallbackEchoService final : public EchoService::CallbackService {
 public:
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context,
                                  const EchoRequest* request,
                                  EchoResponse* response) override {
    auto* reactor = context->DefaultReactor();
    if (request->hang() || request->delay_ms() > 0) {
      // Blocking waits belong off the callback threads.
      std::thread([context, request, response, reactor] {
        reactor->Finish(HandleUnary(context, *request, response));
      }).detach();
      return reactor;
    }
    reactor->Finish(HandleUnary(context, *request, response));
    return reactor;
  }

  grpc::ServerWriteReactor<EchoResponse>* ServerStream(
      grpc::CallbackServerContext* context,
      const EchoRequest* request) override {
    class Writer : public grpc::ServerWriteReactor<EchoResponse> {
     public:
      Writer(grpc::CallbackServerContext* context, const EchoRequest* request)
          : context_(context), request_(request) {
        Next();
      }
      void OnWriteDone(bool ok) override {
        if (!ok) return Finish(grpc::Status::OK);
        Next();
      }
      void OnDone() override { delete this; }

     private:
      void Next() {
        if (sent_ == request_->reply_count()) return Finish(grpc::Status::OK);
        response_ = ReplyFor(context_, *request_, sent_++);
        StartWrite(&response_);
      }
      grpc::CallbackServerContext* context_;
      const EchoRequest* request_;
      EchoResponse response_;
      int sent_ = 0;
    };
    return new Writer(context, request);
  }

  grpc::ServerReadReactor<EchoRequest>* ClientStream(
      grpc::CallbackServerContext* context, EchoResponse* response) override {
    class Reader : public grpc::ServerReadReactor<EchoRequest> {
     public:
      Reader(grpc::CallbackServerContext* context, EchoResponse* response)
          : context_(context), response_(response) {
        StartRead(&request_);
      }
      void OnReadDone(bool ok) override {
        if (!ok) {
          *response_ = ReplyFor(context_, last_, 0);
          response_->set_messages_seen(seen_);
          response_->set_checksum(combined_);
          return Finish(grpc::Status::OK);
        }
        if (!PayloadIntact(request_)) {
          return Finish(
              grpc::Status(grpc::StatusCode::DATA_LOSS, "bad checksum"));
        }
        combined_ = combined_ * 31 + request_.checksum();
        ++seen_;
        last_ = request_;
        StartRead(&request_);
      }
      void OnDone() override { delete this; }

     private:
      grpc::CallbackServerContext* context_;
      EchoResponse* response_;
      EchoRequest request_, last_;
      int seen_ = 0;
      uint64_t combined_ = 0;
    };
    return new Reader(context, response);
  }

  grpc::ServerBidiReactor<EchoRequest, EchoResponse>* Bidi(
      grpc::CallbackServerContext* context) override {
    class Stream : public grpc::ServerBidiReactor<EchoRequest, EchoResponse> {
     public:
      explicit Stream(grpc::CallbackServerContext* context)
          : context_(context) {
        StartRead(&request_);
      }
      void OnReadDone(bool ok) override {
        if (!ok) return Finish(grpc::Status::OK);
        if (!PayloadIntact(request_)) {
          return Finish(
              grpc::Status(grpc::StatusCode::DATA_LOSS, "bad checksum"));
        }
        response_ = ReplyFor(context_, request_, 0);
        response_.set_messages_seen(++seen_);
        StartWrite(&response_);
      }
      void OnWriteDone(bool ok) override {
        if (!ok) return Finish(grpc::Status::OK);
        StartRead(&request_);
      }
      void OnDone() override { delete this; }

     private:
      grpc::CallbackServerContext* context_;
      EchoRequest request_;
      EchoResponse response_;
      int seen_ = 0;
    };
    return new Stream(context);
  }
};

// CQ-async style: Unary and Bidi through the completion-queue API (one
// thread drives the queue); the other two methods stay sync.
class AsyncEchoServer {
 public:
  using Service = EchoService::WithAsyncMethod_Unary<
      EchoService::WithAsyncMethod_Bidi<SyncEchoService>>;
  explicit AsyncEchoServer(grpc::ServerBuilder* builder);
  void Run();   // after BuildAndStart
  void Stop();  // after Server::Shutdown

 private:
  Service service_;
  std::unique_ptr<grpc::ServerCompletionQueue> cq_;
  std::thread thread_;
};

// The echo service in one of the three styles, "sync", "callback" or
// "async" (IsEchoStyle), registered with `builder` on construction. Run()
// after BuildAndStart, Stop() after the server's Shutdown (both matter only
// to the async style, whose queue needs a thread).
bool IsEchoStyle(const std::string& style);
class EchoServiceOfStyle {
 public:
  EchoServiceOfStyle(const std::string& style, grpc::ServerBuilder* builder);
  void Run();
  void Stop();

 private:
  SyncEchoService sync_service_;
  CallbackEchoService callback_service_;
  std::unique_ptr<AsyncEchoServer> async_server_;
};

}  // namespace shmgrpc::test

#endif  // SHMGRPC_TESTS_ECHO_LOGIC_H_
