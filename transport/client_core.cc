#include "transport/client_core.h"

#include <dlfcn.h>

#include <algorithm>

#include "google/protobuf/descriptor.h"

namespace shmgrpc::transport {

ClientCore::ClientCore(const std::string& shm_path, Options options,
                       ChannelSettings settings, bool share_session,
                       PlainChannelFactory make_plain_channel)
    : options_(std::move(options)),
      settings_(std::move(settings)),
      link_(shm_path.empty()
                ? nullptr
                : SessionLink::Get(shm_path, options_, share_session)),
      make_plain_channel_(std::move(make_plain_channel)) {}

std::shared_ptr<grpc::Channel> ClientCore::PlainAttemptChannel() {
  std::lock_guard<std::mutex> lock(plain_channel_mu_);
  if (plain_channel_ == nullptr) plain_channel_ = make_plain_channel_();
  return plain_channel_;
}

namespace {

// Generated stubs name their methods with string literals from the generated
// code (static storage inside a loaded image); a GenericStub passes
// std::string::c_str() (heap or stack). The descriptor pool alone cannot
// tell them apart when the process links the .proto, and hijacking a
// GenericStub call would hand gRPC's ByteBuffer to protobuf.
bool NamedByGeneratedStub(const char* method) {
  Dl_info info;
  return dladdr(method, &info) != 0 && info.dli_fname != nullptr;
}

}  // namespace

bool ClientCore::IsProtobufMethod(const char* method) {
  {
    std::lock_guard<std::mutex> lock(methods_mu_);
    auto it = generated_methods_.find(method);
    if (it != generated_methods_.end()) return it->second;
  }
  // Not cached: heap/stack names are never cached (their address may be
  // reused by another name), so only GenericStub calls pay for dladdr.
  if (!NamedByGeneratedStub(method)) return false;
  // "/package.Service/Method" -> "package.Service.Method"
  std::string name = method[0] == '/' ? method + 1 : method;
  const size_t slash = name.rfind('/');
  bool known = std::find(options_.protobuf_methods.begin(),
                         options_.protobuf_methods.end(),
                         method) != options_.protobuf_methods.end();
  if (!known && slash != std::string::npos) {
    name[slash] = '.';
    known =
        google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(
            name) != nullptr;
  }
  std::lock_guard<std::mutex> lock(methods_mu_);
  generated_methods_.emplace(method, known);
  return known;
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
  stats.unary_calls_in_flight = link.unary_calls_in_flight;
  stats.session = link.session;
  return stats;
}

}  // namespace shmgrpc::transport
