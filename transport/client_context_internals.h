// What an interceptor needs to know of a grpc::ClientContext that gRPC 1.51
// keeps private: it applies these as it sends a call, which a call hijacked
// onto shm never is, and shows them to no interceptor.
#ifndef SHMGRPC_TRANSPORT_CLIENT_CONTEXT_INTERNALS_H_
#define SHMGRPC_TRANSPORT_CLIENT_CONTEXT_INTERNALS_H_

#include <optional>
#include <string>

#include "grpcpp/client_context.h"

namespace shmgrpc::transport {

// True when `context` was made from a server call
// (ClientContext::FromServerContext / FromCallbackServerContext) with
// deadline or cancellation propagation (both are on by default): gRPC's
// core then gives the call the incoming call's deadline if that is sooner,
// and cancels it with the incoming call. Neither the parent call nor its
// deadline can be read, so such calls must go plain. Census propagation
// alone does not count: no shm call has a core census context to inherit.
bool InheritsFromServerCall(const grpc::ClientContext& context);

// The call's wait-for-ready setting if the app set one
// (ClientContext::set_wait_for_ready), else nullopt (the channel's default,
// or the service config's, applies).
std::optional<bool> ExplicitWaitForReady(const grpc::ClientContext& context);

// The call's :authority override (ClientContext::set_authority), empty when
// there is none.
const std::string& AuthorityOverride(const grpc::ClientContext& context);

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_CLIENT_CONTEXT_INTERNALS_H_
