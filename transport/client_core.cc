#include "transport/client_core.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "google/protobuf/descriptor.h"
#include "transport/client_call.h"
#include "transport/log.h"

namespace shmgrpc::transport {

ClientCore::ClientCore(std::string shm_path, Options options,
                       ChannelLimits limits)
    : shm_path_(std::move(shm_path)),
      options_(std::move(options)),
      limits_(limits) {}

ClientCore::~ClientCore() {
  std::shared_ptr<Session> session;
  {
    std::lock_guard<std::mutex> lock(session_mu_);
    stopping_ = true;
    session = std::move(session_);
  }
  session_down_.notify_all();
  if (reconnect_thread_.joinable()) reconnect_thread_.join();
  if (session) session->Shutdown();
}

void ClientCore::Start() {
  if (shm_path_.empty()) return;  // not a unix target: always plain
  Connect().IgnoreError();        // no shm yet: calls go plain meanwhile
  reconnect_thread_ = std::thread([this] { ReconnectLoop(); });
}

void ClientCore::ReconnectLoop() {
  absl::Duration backoff = options_.reconnect_backoff_initial;
  std::unique_lock<std::mutex> lock(session_mu_);
  while (!stopping_) {
    if (session_ && session_->alive()) {
      backoff = options_.reconnect_backoff_initial;
      session_down_.wait(
          lock, [&] { return stopping_ || !session_ || !session_->alive(); });
      continue;
    }
    // Wait first: a server that just died is rarely back within 0 ms, and
    // this keeps a crash loop from turning into a connect storm.
    session_down_.wait_for(lock, absl::ToChronoNanoseconds(backoff),
                           [&] { return stopping_; });
    if (stopping_) break;
    lock.unlock();
    const absl::Status connected = Connect();
    lock.lock();
    if (!connected.ok()) {
      backoff = std::min(backoff * 2, options_.reconnect_backoff_max);
    }
  }
}

absl::Status ClientCore::Connect() {
  {
    std::lock_guard<std::mutex> lock(session_mu_);
    if (session_ && session_->alive()) return absl::OkStatus();
  }
  absl::StatusOr<Handshaken> handshaken = ClientHandshake(shm_path_, options_);
  if (!handshaken.ok()) {
    LogConnectFailure(handshaken.status());
    return handshaken.status();
  }
  std::weak_ptr<ClientCore> weak = weak_from_this();
  // The closed handler learns which session closed through a weak pointer
  // filled in before the session starts.
  auto self = std::make_shared<std::weak_ptr<Session>>();
  std::shared_ptr<Session> session = Session::Create(
      std::move(*handshaken),
      [weak](const shm::ReceivedMessage& message) {
        if (auto core = weak.lock()) core->OnFrame(message);
      },
      [weak, self](const absl::Status& status) {
        if (auto core = weak.lock()) core->OnClosed(self->lock(), status);
      },
      options_.max_block_bytes);
  *self = session;
  std::shared_ptr<Session> replaced;
  {
    std::lock_guard<std::mutex> lock(session_mu_);
    if (stopping_) return absl::CancelledError("channel is being destroyed");
    replaced = std::exchange(session_, session);
    if (replaced) replaced_sessions_ += replaced->send_path_stats();
    // Started under the lock: whoever shuts it down reads session_ after.
    session->Start();
  }
  sessions_opened_.fetch_add(1, std::memory_order_relaxed);
  if (replaced) replaced->Shutdown();
  return absl::OkStatus();
}

void ClientCore::LogConnectFailure(const absl::Status& status) {
  // A server without an shm socket is the documented plain case, and a
  // restarting server is retried with backoff: neither is news. Anything
  // else (no memory for the segment, a refusal, a bad peer) is said once per
  // distinct reason, so a channel that stays plain says why.
  if (IsNoShmSocket(status) || status.ToString() == last_logged_failure_) {
    return;
  }
  last_logged_failure_ = status.ToString();
  ShmLog("client to ", shm_path_,
         ": no shm session, calls go plain: ", last_logged_failure_);
}

std::shared_ptr<Session> ClientCore::session() {
  std::lock_guard<std::mutex> lock(session_mu_);
  if (session_ && session_->alive()) return session_;
  return nullptr;
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

uint64_t ClientCore::Register(const std::shared_ptr<ClientCall>& call,
                              const Session& session) {
  std::lock_guard<std::mutex> lock(calls_mu_);
  // A session marks itself dead before OnClosed takes calls_mu_ to abort
  // the registered calls, so a call either is aborted there or sees this.
  if (!session.alive()) return 0;
  const uint64_t id = next_stream_id_++;
  calls_.emplace(id, call);
  return id;
}

void ClientCore::Unregister(uint64_t stream_id) {
  std::shared_ptr<ClientCall> call;
  std::lock_guard<std::mutex> lock(calls_mu_);
  auto it = calls_.find(stream_id);
  if (it == calls_.end()) return;
  call = std::move(it->second);  // destroyed after the lock is released
  calls_.erase(it);
}

void ClientCore::OnFrame(const shm::ReceivedMessage& message) {
  std::shared_ptr<ClientCall> call;
  {
    std::lock_guard<std::mutex> lock(calls_mu_);
    auto it = calls_.find(message.descriptor.tag);
    if (it != calls_.end()) call = it->second;
  }
  if (call) {
    call->OnFrame(message);
    return;
  }
  // The call already ended (cancelled, deadline): nothing waits for this.
  if (std::shared_ptr<Session> s = session()) s->Release(message);
}

void ClientCore::OnClosed(const std::shared_ptr<Session>& session,
                          const absl::Status& status) {
  ShmLog("client session to ", shm_path_, " closed: ", status.ToString());
  sessions_closed_.fetch_add(1, std::memory_order_relaxed);
  if (session) {
    blocks_reclaimed_.fetch_add(session->blocks_reclaimed(),
                                std::memory_order_relaxed);
  }
  std::vector<std::shared_ptr<ClientCall>> calls;
  {
    std::lock_guard<std::mutex> lock(calls_mu_);
    for (auto& [id, call] : calls_) calls.push_back(call);
  }
  for (auto& call : calls) {
    call->Abort(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                             "shm session to the server closed"),
                /*tell_server=*/false, &calls_aborted_by_close_);
  }
  {
    std::lock_guard<std::mutex> lock(session_mu_);  // pairs with the wait
  }
  session_down_.notify_all();
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
  stats.sessions_opened = sessions_opened_.load(std::memory_order_relaxed);
  stats.sessions_closed = sessions_closed_.load(std::memory_order_relaxed);
  stats.calls_aborted_by_close =
      calls_aborted_by_close_.load(std::memory_order_relaxed);
  stats.blocks_reclaimed = blocks_reclaimed_.load(std::memory_order_relaxed);
  std::shared_ptr<Session> current;
  SendPathStats paths;
  {
    std::lock_guard<std::mutex> lock(session_mu_);
    current = session_;
    paths = replaced_sessions_;
  }
  if (current) {
    paths += current->send_path_stats();
    stats.session_alive = current->alive();
    stats.session = current->Stats();
  }
  stats.messages_chained = paths.chained;
  stats.inline_arena_full = paths.inline_arena_full;
  stats.inline_too_large = paths.inline_too_large;
  return stats;
}

}  // namespace shmgrpc::transport
