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
  switch (reason) {
    case PlainReason::kNoSession:
      plain_no_session_.fetch_add(1, std::memory_order_relaxed);
      break;
    case PlainReason::kNotProtobuf:
      plain_not_protobuf_.fetch_add(1, std::memory_order_relaxed);
      break;
    case PlainReason::kTooLarge:
      plain_too_large_.fetch_add(1, std::memory_order_relaxed);
      break;
    case PlainReason::kArenaFull:
      plain_arena_full_.fetch_add(1, std::memory_order_relaxed);
      break;
    case PlainReason::kLargeMetadata:
      plain_large_metadata_.fetch_add(1, std::memory_order_relaxed);
      break;
    case PlainReason::kRetryPolicy:
      plain_retry_policy_.fetch_add(1, std::memory_order_relaxed);
      break;
    case PlainReason::kStreamLimit:
      plain_stream_limit_.fetch_add(1, std::memory_order_relaxed);
      break;
    case PlainReason::kCallCredentials:
      plain_call_credentials_.fetch_add(1, std::memory_order_relaxed);
      break;
  }
}

ClientStats ClientCore::Stats() {
  ClientStats stats;
  stats.calls_on_shm = calls_on_shm_.load(std::memory_order_relaxed);
  stats.calls_plain_no_session =
      plain_no_session_.load(std::memory_order_relaxed);
  stats.calls_plain_not_protobuf =
      plain_not_protobuf_.load(std::memory_order_relaxed);
  stats.calls_plain_too_large =
      plain_too_large_.load(std::memory_order_relaxed);
  stats.calls_plain_arena_full =
      plain_arena_full_.load(std::memory_order_relaxed);
  stats.calls_plain_large_metadata =
      plain_large_metadata_.load(std::memory_order_relaxed);
  stats.calls_plain_retry_policy =
      plain_retry_policy_.load(std::memory_order_relaxed);
  stats.calls_plain_stream_limit =
      plain_stream_limit_.load(std::memory_order_relaxed);
  stats.calls_plain_call_credentials =
      plain_call_credentials_.load(std::memory_order_relaxed);
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
