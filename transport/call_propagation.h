// Whether a client call inherits anything from a server call.
//
// ClientContext::FromServerContext (and FromCallbackServerContext) make a
// context whose call gRPC's core ties to the incoming server call: the
// onward call gets the incoming call's deadline if that is sooner than its
// own, and is cancelled when the incoming call is. Core does this as it
// sends the call, which a call hijacked onto shm never is, and gRPC 1.51
// shows neither the parent call nor its deadline through its public API.
// Such calls therefore go plain, where core applies both.
#ifndef SHMGRPC_TRANSPORT_CALL_PROPAGATION_H_
#define SHMGRPC_TRANSPORT_CALL_PROPAGATION_H_

#include "grpcpp/client_context.h"

namespace shmgrpc::transport {

// True when `context` was made from a server call with deadline or
// cancellation propagation (both are on by default). Census propagation
// alone does not count: no shm call has a core census context to inherit.
bool InheritsFromServerCall(const grpc::ClientContext& context);

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_CALL_PROPAGATION_H_
