// ClientCore: what one shm channel shares across its calls.
//
// It holds the channel's SessionLink (the session, shared with this
// process's other channels to the same server; see session_link.h), decides
// which methods may be hijacked (only methods named by a generated stub and
// known to the generated protobuf descriptor pool, so a GenericStub's
// ByteBuffer call never is), and counts what went where. Thread-safe.
#ifndef SHMGRPC_TRANSPORT_CLIENT_CORE_H_
#define SHMGRPC_TRANSPORT_CLIENT_CORE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "grpcpp/channel.h"
#include "transport/options.h"
#include "transport/protobuf_methods.h"
#include "transport/retry_throttle.h"
#include "transport/service_config.h"
#include "transport/session.h"
#include "transport/session_link.h"

namespace shmgrpc::transport {

class ClientCall;

struct ClientStats {
  uint64_t calls_on_shm = 0;
  // New calls sent over plain gRPC, by reason.
  uint64_t calls_plain_no_session = 0;
  uint64_t calls_plain_not_protobuf = 0;
  uint64_t calls_plain_too_large = 0;   // request over any block or the limit
  uint64_t calls_plain_arena_full = 0;  // request did not fit in free shm
  uint64_t calls_plain_large_metadata = 0;  // > Options::max_shm_metadata_bytes
  // The service config gives the method a hedging policy, or a retry policy
  // on a streaming method: gRPC's own retries apply to it.
  uint64_t calls_plain_retry_policy = 0;
  // The session had as many streams open as its server allows
  // (Options::max_concurrent_streams).
  uint64_t calls_plain_stream_limit = 0;
  // The call has call credentials (ClientContext::set_credentials), which
  // gRPC applies as it sends a call: only a plain call carries them.
  uint64_t calls_plain_call_credentials = 0;
  // The call's context was made from a server call
  // (ClientContext::FromServerContext) to inherit its deadline or
  // cancellation, which gRPC's core ties to the call as it sends it.
  uint64_t calls_plain_inherits_server_call = 0;
  // Cancelled (TryCancel) or past its deadline before it started: gRPC's
  // core ends it without sending it.
  uint64_t calls_plain_ended_before_start = 0;
  // New calls sent over plain gRPC, for any of the reasons above.
  uint64_t calls_plain() const {
    return calls_plain_no_session + calls_plain_not_protobuf +
           calls_plain_too_large + calls_plain_arena_full +
           calls_plain_large_metadata + calls_plain_retry_policy +
           calls_plain_stream_limit + calls_plain_call_credentials +
           calls_plain_inherits_server_call + calls_plain_ended_before_start;
  }
  // Attempts after the first of unary shm calls, as their method's retry
  // policy asked (service_config.h).
  uint64_t shm_retries = 0;
  // Of those: attempts made over plain gRPC because the link had no session
  // then (the server's shm went away, its plain port still served).
  uint64_t shm_retries_over_plain = 0;
  // Messages inside shm calls that needed more than one block (all sessions
  // so far): chained over several blocks, or sent inline on the socket.
  uint64_t messages_chained = 0;
  uint64_t inline_arena_full = 0;
  uint64_t inline_too_large = 0;
  // The session is the channel's link's, shared with this process's other
  // channels to the same server (session_link.h): these and the counters
  // above from messages_chained on count every channel's traffic on it.
  uint64_t sessions_opened = 0;   // the first one included
  uint64_t sessions_closed = 0;   // peer gone, connection broken, drained
  uint64_t sessions_drained = 0;  // of those: closed after a server's goaway
  uint64_t calls_aborted_by_close = 0;  // ended UNAVAILABLE by a close
  uint64_t blocks_reclaimed = 0;        // our blocks the gone peer still held
  bool session_alive = false;
  // shm calls on the session (from every channel on it) awaiting an
  // answer: unary calls in flight, streams whose message sent awaits one
  // back. Past WaitOptions::max_busy_streams_for_spin of them, its thread
  // stops spinning for frames when other threads take its core.
  uint64_t busy_calls = 0;
  shm::EndpointStats session;  // zero when there is no session
};

// What a plain channel with the same channel arguments would do that shm
// calls do too: enforce its limits, name the client in `user-agent`.
struct ChannelSettings {
  // The channel's GRPC_ARG_MAX_SEND_MESSAGE_LENGTH and
  // GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH up to what a session carries (64 MiB),
  // or Options::max_message_bytes when the argument is unset.
  size_t max_send_message_bytes = 4 << 20;
  size_t max_receive_message_bytes = 4 << 20;
  // The channel's GRPC_ARG_MAX_METADATA_SIZE (8 KiB by default), which a
  // plain call enforces on the metadata it receives.
  size_t max_received_metadata_bytes = 8192;
  // Sent with every call as gRPC sends it (with "shmgrpc" as the transport),
  // including the channel's user-agent prefix and suffix arguments.
  std::string user_agent;
  // The :authority of calls without their own (ClientContext::set_authority),
  // as gRPC picks it: GRPC_ARG_DEFAULT_AUTHORITY, else the unix resolvers'
  // "localhost".
  std::string default_authority = "localhost";
  // The channel's service config (GRPC_ARG_SERVICE_CONFIG; null when it has
  // no methodConfig) for per-method limits and retry policies, and its retry
  // throttle (null unless it sets retryThrottling). With
  // GRPC_ARG_ENABLE_RETRIES 0 its retry policies are dropped.
  std::shared_ptr<const ServiceConfig> service_config;
  bool retries_enabled = true;
  std::shared_ptr<RetryThrottle> retry_throttle;
};

class ClientCore {
 public:
  // `shm_path` empty: never a session (not a unix target). `share_session`:
  // join another channel's link to the same server when the session options
  // match (false: GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, a session of its own).
  // Returns once the first handshake attempt is over (see SessionLink::Get).
  // `make_plain_channel` makes a channel to the same target with the same
  // credentials and arguments, no interceptors and gRPC's retries off: for
  // retry attempts of shm calls that find no session (PlainAttemptChannel).
  using PlainChannelFactory = std::function<std::shared_ptr<grpc::Channel>()>;
  ClientCore(const std::string& shm_path, Options options,
             ChannelSettings settings, bool share_session,
             PlainChannelFactory make_plain_channel);
  // Lets go of the session link (SessionLink::Release: a shared one
  // lingers).
  ~ClientCore();

  // The live session, or nullptr.
  std::shared_ptr<Session> session() {
    return link_ ? link_->session() : nullptr;
  }

  // `method` as ClientRpcInfo::method() gives it (the pointer matters).
  bool IsProtobufMethod(const char* method) {
    return protobuf_methods_.Contains(method);
  }

  // Calls register once hijacked and unregister when they end. Returns the
  // stream id, or 0 when `session` has closed meanwhile (go plain).
  uint64_t Register(const std::shared_ptr<ClientCall>& call,
                    const Session& session) {
    return link_->Register(call, session);
  }
  void Unregister(uint64_t stream_id) { link_->Unregister(stream_id); }

  enum class PlainReason {
    kNoSession,
    kNotProtobuf,
    kTooLarge,
    kArenaFull,
    kLargeMetadata,
    kRetryPolicy,
    kStreamLimit,
    kCallCredentials,
    kInheritsServerCall,
    kEndedBeforeStart,
    kCount,  // not a reason: how many there are
  };
  void CountPlain(PlainReason reason);
  void CountShm() { calls_on_shm_.fetch_add(1, std::memory_order_relaxed); }
  void CountRetry() { retries_.fetch_add(1, std::memory_order_relaxed); }
  void CountRetryOverPlain() {
    retries_over_plain_.fetch_add(1, std::memory_order_relaxed);
  }

  // Made on first use and kept (its connection too) for the channel's life.
  std::shared_ptr<grpc::Channel> PlainAttemptChannel();

  const Options& options() const { return options_; }
  const ChannelSettings& settings() const { return settings_; }
  ClientStats Stats();

 private:
  const Options options_;
  const ChannelSettings settings_;
  ProtobufMethods protobuf_methods_;
  const std::shared_ptr<SessionLink> link_;  // null: no unix target

  std::atomic<uint64_t> calls_on_shm_{0}, retries_{0}, retries_over_plain_{0};
  // By PlainReason.
  std::array<std::atomic<uint64_t>, static_cast<size_t>(PlainReason::kCount)>
      plain_{};

  const PlainChannelFactory make_plain_channel_;
  std::mutex plain_channel_mu_;
  std::shared_ptr<grpc::Channel>
      plain_channel_;  // guarded by plain_channel_mu_
};

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_CLIENT_CORE_H_
