// CreateChannel: a grpc::Channel whose calls travel over shared memory when
// the server offers it, and over plain gRPC on the same target when not.
#ifndef SHMGRPC_TRANSPORT_SHM_CHANNEL_H_
#define SHMGRPC_TRANSPORT_SHM_CHANNEL_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "grpcpp/channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "grpcpp/support/client_interceptor.h"
#include "transport/client_core.h"
#include "transport/options.h"

namespace shmgrpc {

// `target` is the server's plain gRPC address, "unix:/path" (or
// "unix:///path", or "unix-abstract:name"); the shm handshake socket is
// "/path.shm" (abstract: "name.shm"). Protobuf calls
// are hijacked onto a shm session when one is up; everything else (no
// session, non-protobuf methods such as a GenericStub's, requests too large
// for the arena) goes to `target` unchanged. `args` configure the plain
// channel as usual. Channels of this process to the same server share one
// shm session when their session options match, unless `args` set
// GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL to 1 (transport/session_link.h).
std::shared_ptr<grpc::Channel> CreateChannel(
    const std::string& target, const Options& options = Options(),
    const grpc::ChannelArguments& args = grpc::ChannelArguments());

// The same in gRPC's own shapes, so that `grpc::` -> `shmgrpc::` is the whole
// swap: `credentials` are the plain channel's (e.g. InsecureChannelCredentials
// or experimental::LocalCredentials(UDS), whichever the server's port takes).
// Shm sessions do not use them: the server checks a shm peer's uid itself
// (Options::peer_uid_policy).
std::shared_ptr<grpc::Channel> CreateChannel(
    const std::string& target,
    const std::shared_ptr<grpc::ChannelCredentials>& credentials,
    const Options& options = Options());
std::shared_ptr<grpc::Channel> CreateCustomChannel(
    const std::string& target,
    const std::shared_ptr<grpc::ChannelCredentials>& credentials,
    const grpc::ChannelArguments& args, const Options& options = Options());

namespace experimental {
// As grpc::experimental::CreateCustomChannelWithInterceptors: the
// application's client interceptors see every call, over shm or plain, with
// the same hook points (they run before shm's own interceptor, which must be
// last in the chain because it carries the calls it hijacks). Metadata they
// add is sent; messages they replace (ModifySendMessage) are the ones sent.
std::shared_ptr<grpc::Channel> CreateCustomChannelWithInterceptors(
    const std::string& target,
    const std::shared_ptr<grpc::ChannelCredentials>& credentials,
    const grpc::ChannelArguments& args,
    std::vector<
        std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
        interceptor_creators,
    const Options& options = Options());
}  // namespace experimental

using transport::ClientStats;
// Counters of a channel made by CreateChannel (nullopt for other channels).
std::optional<ClientStats> GetChannelStats(const grpc::Channel* channel);

// "unix:/p" or "unix:///p" -> "/p"; "unix-abstract:name" -> "\0name" (the
// abstract namespace); empty when `target` is not a unix one.
std::string UnixPathOf(const std::string& target);

}  // namespace shmgrpc

#endif  // SHMGRPC_TRANSPORT_SHM_CHANNEL_H_
