#include "transport/client_context_internals.h"

#include <cstdint>

#include "grpc/impl/codegen/propagation_bits.h"
#include "grpcpp/version_info.h"

// gRPC 1.51's ClientContext names grpc::internal::ClientContextAccessor a
// friend without defining it anywhere (not in libgrpc++, not in its
// headers): the class below is that definition, and only reads fields.
// Another gRPC version fails to build here until the class is checked
// against its client_context.h, rather than silently reading wrong fields.
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
  static std::optional<bool> ExplicitWaitForReady(
      const ClientContext& context) {
    if (!context.wait_for_ready_explicitly_set_) return std::nullopt;
    return context.wait_for_ready_;
  }
  static const std::string& Authority(const ClientContext& context) {
    return context.authority_;
  }
};

}  // namespace grpc::internal

namespace shmgrpc::transport {

using Accessor = grpc::internal::ClientContextAccessor;

bool InheritsFromServerCall(const grpc::ClientContext& context) {
  return Accessor::HasParentCall(context) &&
         (Accessor::PropagationMask(context) &
          (GRPC_PROPAGATE_DEADLINE | GRPC_PROPAGATE_CANCELLATION)) != 0;
}

std::optional<bool> ExplicitWaitForReady(const grpc::ClientContext& context) {
  return Accessor::ExplicitWaitForReady(context);
}

const std::string& AuthorityOverride(const grpc::ClientContext& context) {
  return Accessor::Authority(context);
}

}  // namespace shmgrpc::transport
