// Arena replies: a server's protobuf replies serialized straight into the
// shm session's arena by the thread that sends them.
//
// Without this, the reply of an shm call is serialized by gRPC into a heap
// buffer, carried through the in-process transport to the injector and
// copied from there into the arena: the one copy (and one large
// allocation) shm adds to the copies gRPC's in-process transport makes
// (29 us of a 1 MiB call here, see ARCHITECTURE). With the factory
// registered on the server, as its last interceptor,
//
//   std::vector<std::unique_ptr<
//       grpc::experimental::ServerInterceptorFactoryInterface>> creators;
//   creators.push_back(shmgrpc::ArenaReplyInterceptorFactory());
//   builder.experimental().SetInterceptorCreators(std::move(creators));
//
// a reply of an shm call is serialized once, into a block of its session's
// arena, which gRPC carries as a slice and the injector sends as it is.
//
// It acts on replies of at least kMinArenaReplyBytes that a handler sends
// through the sync or callback API (the CQ-async API serializes before any
// interceptor runs; those replies keep the copy), on methods known to carry
// protobuf (ProtobufMethods: a generated service's method the descriptor
// pool knows, or one listed in `protobuf_methods`; a generic service's calls
// never). Anything else passes untouched, plain calls included: a call is
// an shm call when its metadata names a live session by that session's
// random token (kReplyToKey, set by the injector; a client's own value for
// it is dropped), so a plain client cannot make the server write into
// anyone's arena. When no block is free the reply takes gRPC's way.
#ifndef SHMGRPC_TRANSPORT_ARENA_REPLIES_H_
#define SHMGRPC_TRANSPORT_ARENA_REPLIES_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "grpcpp/support/server_interceptor.h"
#include "transport/session.h"

namespace shmgrpc {

// Smaller replies are left to gRPC: copying them costs less than the
// bookkeeping of an arena slice.
inline constexpr size_t kMinArenaReplyBytes = 16 << 10;

// `protobuf_methods`: as Options::protobuf_methods, for lite services.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
ArenaReplyInterceptorFactory(std::vector<std::string> protobuf_methods = {});

// The same as the only creator, for a server without interceptors of its own:
//   builder.experimental().SetInterceptorCreators(
//       shmgrpc::ArenaReplyCreators());
std::vector<
    std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
ArenaReplyCreators(std::vector<std::string> protobuf_methods = {});

namespace transport {

// Metadata the injector adds to each call: which session and stream the
// reply goes to.
inline constexpr char kReplyToKey[] = "x-shmgrpc-reply-to";
std::string ReplyToValue(const Session& session, uint64_t stream);

// Makes `session` findable by its token while it lives (server side).
void RegisterForArenaReplies(const std::shared_ptr<Session>& session);

}  // namespace transport
}  // namespace shmgrpc

#endif  // SHMGRPC_TRANSPORT_ARENA_REPLIES_H_
