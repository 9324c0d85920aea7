#include "transport/call_propagation.h"

#include <cstdint>

#include "grpc/impl/codegen/propagation_bits.h"
#include "grpcpp/version_info.h"

// gRPC 1.51's ClientContext keeps the parent call and the propagation mask
// private, and names grpc::internal::ClientContextAccessor a friend without
// defining it anywhere (not in libgrpc++, not in its headers): the class
// below is that definition, and reads the two fields, nothing else. Another
// gRPC version fails to build here until the class is checked against it,
// rather than silently dropping inherited deadlines.
static_assert(GRPC_CPP_VERSION_MAJOR == 1 && GRPC_CPP_VERSION_MINOR == 51,
              "check grpc::internal::ClientContextAccessor against this "
              "gRPC's client_context.h");

namespace grpc::internal {

class ClientContextAccessor {
 public:
  static bool HasParentCall(const ClientContext& context) {
    return context.propagate_from_call_ != nullptr;
  }
  static uint32_t PropagationMask(const ClientContext& context) {
    return context.propagation_options_.c_bitmask();
  }
};

}  // namespace grpc::internal

namespace shmgrpc::transport {

bool InheritsFromServerCall(const grpc::ClientContext& context) {
  using Accessor = grpc::internal::ClientContextAccessor;
  return Accessor::HasParentCall(context) &&
         (Accessor::PropagationMask(context) &
          (GRPC_PROPAGATE_DEADLINE | GRPC_PROPAGATE_CANCELLATION)) != 0;
}

}  // namespace shmgrpc::transport
