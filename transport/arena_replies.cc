#include "transport/arena_replies.h"

#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "codec/message_codec.h"
#include "google/protobuf/message_lite.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/string_ref.h"
#include "transport/protobuf_methods.h"
#include "transport/weak_registry.h"

namespace shmgrpc {
namespace {

using grpc::experimental::InterceptionHookPoints;
using transport::Session;

transport::WeakRegistry<uint64_t, Session>& SessionsByToken() {
  static auto* sessions = new transport::WeakRegistry<uint64_t, Session>();
  return *sessions;
}

class ArenaReplyInterceptor : public grpc::experimental::Interceptor {
 public:
  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    // The client's metadata is read here, where gRPC hands it over before
    // the handler runs: the ServerContext's copy is filled lazily by its
    // first reader, which could race with a handler's own first read.
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      ReadReplyTo(*methods->GetRecvInitialMetadata());
    }
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::PRE_SEND_MESSAGE)) {
      WriteReplyIntoArena(methods);
    }
    methods->Proceed();
  }

 private:
  // Sets token_ and stream_ for an shm call. The session itself is looked
  // up only for a reply large enough (the registry's lock is process-wide,
  // and most replies are small).
  void ReadReplyTo(
      const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) {
    auto it = metadata.find(transport::kReplyToKey);
    if (it == metadata.end()) return;  // a plain call
    const absl::string_view value(it->second.data(), it->second.size());
    const size_t colon = value.find(':');
    uint64_t token = 0;
    if (colon != absl::string_view::npos &&
        absl::SimpleHexAtoi(value.substr(0, colon), &token) &&
        absl::SimpleAtoi(value.substr(colon + 1), &stream_)) {
      token_ = token;
    }
  }

  void WriteReplyIntoArena(
      grpc::experimental::InterceptorBatchMethods* methods) {
    // The reply not yet serialized; nullptr when the API did it already.
    const void* reply = methods->GetSendMessage();
    if (reply == nullptr || token_ == 0) return;
    // The factory made this interceptor only for protobuf methods.
    const auto& message =
        *static_cast<const google::protobuf::MessageLite*>(reply);
    const size_t size = codec::SerializedSize(message);
    if (size < kMinArenaReplyBytes) return;
    if (session_ == nullptr) {
      session_ = SessionsByToken().Find(token_);
      if (session_ == nullptr) {
        token_ = 0;  // gone (or never ours): gRPC's way from now on
        return;
      }
    }
    absl::StatusOr<grpc::Slice> slice =
        session_->WriteArenaSlice(stream_, size, [&](uint8_t* data) {
          const codec::OutChunk chunk{data, size};
          codec::SerializeInto(message, absl::MakeConstSpan(&chunk, 1));
        });
    if (!slice.ok()) return;  // gRPC serializes it, the injector copies
    grpc::ByteBuffer serialized(&*slice, 1);
    // No message left to serialize: gRPC sends the buffer given here.
    methods->ModifySendMessage(nullptr);
    methods->GetSerializedSendMessage()->Swap(&serialized);
  }

  uint64_t token_ = 0;  // of an shm call's session, else 0
  uint64_t stream_ = 0;
  std::shared_ptr<Session> session_;  // found by token_ on first use
};

class ArenaReplyInterceptorFactoryImpl
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit ArenaReplyInterceptorFactoryImpl(std::vector<std::string> listed)
      : protobuf_methods_(std::move(listed)) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    if (!protobuf_methods_.Contains(info->method())) return nullptr;
    return new ArenaReplyInterceptor();
  }

 private:
  transport::ProtobufMethods protobuf_methods_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
ArenaReplyInterceptorFactory(std::vector<std::string> protobuf_methods) {
  return std::make_unique<ArenaReplyInterceptorFactoryImpl>(
      std::move(protobuf_methods));
}

std::vector<
    std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
ArenaReplyCreators(std::vector<std::string> protobuf_methods) {
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      creators;
  creators.push_back(ArenaReplyInterceptorFactory(std::move(protobuf_methods)));
  return creators;
}

namespace transport {

std::string ReplyToValue(const Session& session, uint64_t stream) {
  return absl::StrCat(absl::Hex(session.token()), ":", stream);
}

void RegisterForArenaReplies(const std::shared_ptr<Session>& session) {
  if (session->token() != 0) SessionsByToken().Add(session->token(), session);
}

}  // namespace transport
}  // namespace shmgrpc
