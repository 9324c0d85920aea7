#include "transport/shm_channel.h"

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "grpc/grpc.h"
#include "grpc/impl/codegen/grpc_types.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/client_interceptor.h"
#include "shm/endpoint.h"
#include "transport/client_call.h"
#include "transport/log.h"
#include "transport/service_config.h"
#include "transport/weak_registry.h"

namespace shmgrpc {
namespace {

class InterceptorFactory
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit InterceptorFactory(std::shared_ptr<transport::ClientCore> core)
      : core_(std::move(core)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo* info) override {
    return new transport::ClientCallInterceptor(
        std::make_shared<transport::ClientCall>(core_, info));
  }

 private:
  std::shared_ptr<transport::ClientCore> core_;
};

// Channels made here -> their cores, for GetChannelStats.
transport::WeakRegistry<const grpc::Channel*, transport::ClientCore>&
Registry() {
  static auto* registry =
      new transport::WeakRegistry<const grpc::Channel*, transport::ClientCore>;
  return *registry;
}

// The last setting of `key` with `type` in `args` (gRPC honours the last),
// if any. Points into `args`.
const grpc_arg* LastArg(const grpc::ChannelArguments& args,
                        absl::string_view key, grpc_arg_type type) {
  const grpc_channel_args c_args = args.c_channel_args();
  const grpc_arg* last = nullptr;
  for (size_t i = 0; i < c_args.num_args; ++i) {
    if (c_args.args[i].type == type && key == c_args.args[i].key) {
      last = &c_args.args[i];
    }
  }
  return last;
}

std::optional<int> IntegerArg(const grpc::ChannelArguments& args,
                              absl::string_view key) {
  const grpc_arg* arg = LastArg(args, key, GRPC_ARG_INTEGER);
  return arg == nullptr ? std::nullopt : std::optional<int>(arg->value.integer);
}

// Empty when unset.
std::string StringArg(const grpc::ChannelArguments& args,
                      absl::string_view key) {
  const grpc_arg* arg = LastArg(args, key, GRPC_ARG_STRING);
  return arg == nullptr || arg->value.string == nullptr ? ""
                                                        : arg->value.string;
}

// gRPC's user-agent, "primary grpc-c/V (linux; chttp2)[ secondary]", with
// shmgrpc as the transport. The primary string of grpc::ChannelArguments is
// "grpc-c++/V", after any SetUserAgentPrefix.
std::string UserAgentOf(const grpc::ChannelArguments& args) {
  std::string user_agent;
  if (const std::string primary =
          StringArg(args, GRPC_ARG_PRIMARY_USER_AGENT_STRING);
      !primary.empty()) {
    absl::StrAppend(&user_agent, primary, " ");
  }
  absl::StrAppend(&user_agent, "grpc-c/", grpc_version_string(),
                  " (linux; shmgrpc)");
  if (const std::string secondary =
          StringArg(args, GRPC_ARG_SECONDARY_USER_AGENT_STRING);
      !secondary.empty()) {
    absl::StrAppend(&user_agent, " ", secondary);
  }
  return user_agent;
}

// What a plain channel with `args` would do. A message limit set in the
// arguments binds shm calls as it binds plain ones, up to what any peer's
// session carries: a message that does not fit the arena travels inline,
// and every endpoint takes inline payloads of 64 MiB (more when its
// max_message_bytes is larger); negative, gRPC's "unlimited", means that
// much. Without the argument, Options::max_message_bytes (gRPC's default
// receive limit) applies. `server` names the server for the retry throttle,
// which channels to one server share.
transport::ChannelSettings SettingsOf(const grpc::ChannelArguments& args,
                                      const Options& options,
                                      const std::string& server) {
  const size_t carried =
      std::max(options.max_message_bytes, shm::kDefaultMaxInlineBytes);
  auto message_limit = [&](absl::string_view key) {
    const std::optional<int> arg = IntegerArg(args, key);
    if (!arg.has_value()) return options.max_message_bytes;
    return *arg >= 0 ? std::min(static_cast<size_t>(*arg), carried) : carried;
  };
  transport::ChannelSettings settings;
  settings.max_send_message_bytes =
      message_limit(GRPC_ARG_MAX_SEND_MESSAGE_LENGTH);
  settings.max_receive_message_bytes =
      message_limit(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH);
  const std::optional<int> metadata =
      IntegerArg(args, GRPC_ARG_MAX_METADATA_SIZE);
  if (metadata.has_value() && *metadata > 0) {
    settings.max_received_metadata_bytes = static_cast<size_t>(*metadata);
  }
  settings.user_agent = UserAgentOf(args);
  if (std::string authority = StringArg(args, GRPC_ARG_DEFAULT_AUTHORITY);
      !authority.empty()) {
    settings.default_authority = std::move(authority);
  }
  // gRPC applies these in its core, which a hijacked call never reaches:
  // shm calls apply them themselves (client_call.h).
  settings.retries_enabled =
      IntegerArg(args, GRPC_ARG_ENABLE_RETRIES).value_or(1) != 0;
  if (const std::string json = StringArg(args, GRPC_ARG_SERVICE_CONFIG);
      !json.empty()) {
    absl::StatusOr<transport::ServiceConfig> config =
        transport::ServiceConfig::Parse(json);
    if (!config.ok()) {
      transport::ShmLog("shm calls do not apply the service config: ",
                        config.status().message());
    } else {
      if (config->throttling().has_value() && settings.retries_enabled) {
        settings.retry_throttle = transport::RetryThrottle::ForServer(
            server, config->throttling()->first, config->throttling()->second);
      }
      if (!config->empty()) {
        settings.service_config =
            std::make_shared<const transport::ServiceConfig>(
                *std::move(config));
      }
    }
  }
  return settings;
}

}  // namespace

std::string UnixPathOf(const std::string& target) {
  if (absl::StartsWith(target, "unix://")) return target.substr(7);
  if (absl::StartsWith(target, "unix:")) return target.substr(5);
  constexpr absl::string_view kAbstract = "unix-abstract:";
  if (absl::StartsWith(target, kAbstract) && target.size() > kAbstract.size()) {
    return std::string(1, '\0') + target.substr(kAbstract.size());
  }
  return "";
}

std::shared_ptr<grpc::Channel> CreateChannel(
    const std::string& target, const Options& options,
    const grpc::ChannelArguments& args) {
  return CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args,
                             options);
}

std::shared_ptr<grpc::Channel> CreateChannel(
    const std::string& target,
    const std::shared_ptr<grpc::ChannelCredentials>& credentials,
    const Options& options) {
  return CreateCustomChannel(target, credentials, grpc::ChannelArguments(),
                             options);
}

std::shared_ptr<grpc::Channel> CreateCustomChannel(
    const std::string& target,
    const std::shared_ptr<grpc::ChannelCredentials>& credentials,
    const grpc::ChannelArguments& args, const Options& options) {
  return experimental::CreateCustomChannelWithInterceptors(target, credentials,
                                                           args, {}, options);
}

namespace experimental {

std::shared_ptr<grpc::Channel> CreateCustomChannelWithInterceptors(
    const std::string& target,
    const std::shared_ptr<grpc::ChannelCredentials>& credentials,
    const grpc::ChannelArguments& args,
    std::vector<
        std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
        interceptor_creators,
    const Options& options) {
  const std::string path = UnixPathOf(target);
  // Channels share a session as gRPC channels share a subchannel: unless
  // told to keep their own.
  const std::optional<int> local_pool =
      IntegerArg(args, GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL);
  auto core = std::make_shared<transport::ClientCore>(
      path.empty() ? "" : path + ".shm", options,
      SettingsOf(args, options, path.empty() ? target : path),
      /*share_session=*/!local_pool.has_value() || *local_pool == 0,
      [target, credentials, args] {
        // The attempt is one of the shm call's, counted by its retry
        // policy: gRPC must not retry it again.
        grpc::ChannelArguments attempt_args = args;
        attempt_args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
        return grpc::CreateCustomChannel(target, credentials, attempt_args);
      });
  // Last: it carries hijacked calls, and gRPC runs no interceptor after the
  // one that hijacks.
  interceptor_creators.push_back(std::make_unique<InterceptorFactory>(core));
  std::shared_ptr<grpc::Channel> channel =
      grpc::experimental::CreateCustomChannelWithInterceptors(
          target, credentials, args, std::move(interceptor_creators));
  Registry().Add(channel.get(), core);
  return channel;
}

}  // namespace experimental

std::optional<ClientStats> GetChannelStats(const grpc::Channel* channel) {
  std::shared_ptr<transport::ClientCore> core = Registry().Find(channel);
  if (!core) return std::nullopt;
  return core->Stats();
}

}  // namespace shmgrpc
