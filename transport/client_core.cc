#include "transport/client_core.h"

namespace shmgrpc::transport {

ClientCore::ClientCore(const std::string& shm_path, Options options,
                       ChannelSettings settings, bool share_session,
                       PlainChannelFactory make_plain_channel)
    : options_(std::move(options)),
      settings_(std::move(settings)),
      protobuf_methods_(options_.protobuf_methods),
      link_(shm_path.empty()
                ? nullptr
                : SessionLink::Get(shm_path, options_, share_session)),
      make_plain_channel_(std::move(make_plain_channel)) {}

ClientCore::~ClientCore() {
  if (link_ != nullptr) SessionLink::Release(link_);
}

std::shared_ptr<grpc::Channel> ClientCore::PlainAttemptChannel() {
  std::lock_guard<std::mutex> lock(plain_channel_mu_);
  if (plain_channel_ == nullptr) plain_channel_ = make_plain_channel_();
  return plain_channel_;
}

void ClientCore::CountPlain(PlainReason reason) {
  plain_[static_cast<size_t>(reason)].fetch_add(1, std::memory_order_relaxed);
}

ClientStats ClientCore::Stats() {
  ClientStats stats;
  stats.calls_on_shm = calls_on_shm_.load(std::memory_order_relaxed);
  auto plain = [&](PlainReason reason) {
    return plain_[static_cast<size_t>(reason)].load(std::memory_order_relaxed);
  };
  stats.calls_plain_no_session = plain(PlainReason::kNoSession);
  stats.calls_plain_not_protobuf = plain(PlainReason::kNotProtobuf);
  stats.calls_plain_too_large = plain(PlainReason::kTooLarge);
  stats.calls_plain_arena_full = plain(PlainReason::kArenaFull);
  stats.calls_plain_large_metadata = plain(PlainReason::kLargeMetadata);
  stats.calls_plain_retry_policy = plain(PlainReason::kRetryPolicy);
  stats.calls_plain_stream_limit = plain(PlainReason::kStreamLimit);
  stats.calls_plain_call_credentials = plain(PlainReason::kCallCredentials);
  stats.calls_plain_inherits_server_call =
      plain(PlainReason::kInheritsServerCall);
  stats.calls_plain_ended_before_start = plain(PlainReason::kEndedBeforeStart);
  stats.shm_retries = retries_.load(std::memory_order_relaxed);
  stats.shm_retries_over_plain =
      retries_over_plain_.load(std::memory_order_relaxed);
  if (link_ == nullptr) return stats;
  const LinkStats link = link_->Stats();
  stats.sessions_opened = link.sessions_opened;
  stats.sessions_closed = link.sessions_closed;
  stats.sessions_drained = link.sessions_drained;
  stats.calls_aborted_by_close = link.calls_aborted_by_close;
  stats.blocks_reclaimed = link.blocks_reclaimed;
  stats.messages_chained = link.send_paths.chained;
  stats.inline_arena_full = link.send_paths.inline_arena_full;
  stats.inline_too_large = link.send_paths.inline_too_large;
  stats.session_alive = link.session_alive;
  stats.busy_calls = link.busy_calls;
  stats.session = link.session;
  return stats;
}

}  // namespace shmgrpc::transport
