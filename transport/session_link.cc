#include "transport/session_link.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "codec/frame_type.h"
#include "transport/client_call.h"
#include "transport/deadline_timer.h"
#include "transport/handshake.h"
#include "transport/log.h"
#include "transport/weak_registry.h"

namespace shmgrpc::transport {
namespace {

// Links other channels may join, by SessionKey.
WeakRegistry<std::string, SessionLink>& Registry() {
  static auto* registry = new WeakRegistry<std::string, SessionLink>();
  return *registry;
}

}  // namespace

std::string SessionLink::SessionKey(const std::string& shm_path,
                                    const Options& options) {
  // Every Options field the handshake, the session or the reconnecting
  // uses; per-call fields (limits on metadata, protobuf_methods, stream
  // windows) are the channels' own.
  const shm::WaitOptions& wait = options.wait;
  return absl::StrCat(
      shm_path, "|", options.arena_bytes, "|", options.ring_slots, "|",
      options.max_block_bytes, "|", options.max_message_bytes, "|",
      static_cast<int>(wait.strategy), "|",
      absl::ToInt64Nanoseconds(wait.max_spin), "|",
      absl::ToInt64Nanoseconds(wait.min_spin), "|",
      absl::ToInt64Nanoseconds(wait.spin_per_mib), "|",
      absl::ToInt64Nanoseconds(wait.pause_spin), "|",
      absl::ToInt64Nanoseconds(wait.period), "|",
      absl::ToInt64Nanoseconds(wait.liveness_check), "|",
      wait.max_busy_streams_for_spin, "|",
      absl::ToInt64Nanoseconds(options.handshake_timeout), "|",
      absl::ToInt64Nanoseconds(options.stalled_peer_timeout), "|",
      absl::ToInt64Nanoseconds(options.reconnect_backoff_initial), "|",
      absl::ToInt64Nanoseconds(options.reconnect_backoff_max), "|",
      static_cast<int>(options.peer_uid_policy), "|",
      absl::StrJoin(options.allowed_peer_uids, ","));
}

std::shared_ptr<SessionLink> SessionLink::Get(const std::string& shm_path,
                                              const Options& options,
                                              bool shared) {
  std::shared_ptr<SessionLink> link;
  bool made = true;
  if (!shared) {
    link.reset(new SessionLink(shm_path, options));
  } else {
    link = Registry().FindOrAdd(
        SessionKey(shm_path, options),
        [&] {
          auto made_link =
              std::shared_ptr<SessionLink>(new SessionLink(shm_path, options));
          made_link->shared_ = true;  // before another channel can find it
          return made_link;
        },
        &made);
  }
  // Outside the registry's lock: a handshake takes ~20 ms.
  link->StartOnce();
  if (!made) link->Connect().IgnoreError();  // no-op while the session is up
  return link;
}

void SessionLink::Release(std::shared_ptr<SessionLink> link) {
  if (!link->shared_ || link->options_.session_linger <= absl::ZeroDuration()) {
    return;  // the caller's reference goes now
  }
  {
    std::lock_guard<std::mutex> lock(link->linger_mu_);
    link->linger_until_ =
        std::chrono::steady_clock::now() +
        absl::ToChronoNanoseconds(link->options_.session_linger);
    if (link->linger_held_) return;  // the hold under way lasts until then
    link->linger_held_ = true;
  }
  SessionLink* raw = link.get();
  raw->HoldUntilLingerEnds(std::move(link));
}

void SessionLink::HoldUntilLingerEnds(std::shared_ptr<SessionLink> self) {
  absl::Duration left;
  {
    std::lock_guard<std::mutex> lock(linger_mu_);
    left = absl::FromChrono(linger_until_ - std::chrono::steady_clock::now());
  }
  absl::StatusOr<DeadlineTimer::Handle> held =
      DeadlineTimer::Process().ScheduleAfter(left, [self]() mutable {
        SessionLink* raw = self.get();
        raw->OnLingerEnd(std::move(self));
      });
  if (!held.ok()) {
    // No timer thread: no linger; `self` goes when this returns.
    std::lock_guard<std::mutex> lock(linger_mu_);
    linger_held_ = false;
  }
}

void SessionLink::OnLingerEnd(std::shared_ptr<SessionLink> self) {
  bool extended;
  {
    std::lock_guard<std::mutex> lock(linger_mu_);
    // Released again meanwhile?
    extended = linger_until_ > std::chrono::steady_clock::now();
    if (!extended) linger_held_ = false;
  }
  if (extended) {
    HoldUntilLingerEnds(std::move(self));
    return;
  }
  // Usually the last reference: the destructor closes the session and
  // joins threads, which the timer thread must not wait for.
  absl::StatusOr<shm::Thread> closer = shm::Thread::Start(
      "shm-linger-end", [self = std::move(self)]() mutable { self.reset(); });
  if (closer.ok()) closer->detach();  // else `self` went inside Start
}

SessionLink::SessionLink(std::string shm_path, Options options)
    : shm_path_(std::move(shm_path)), options_(std::move(options)) {}

SessionLink::~SessionLink() {
  std::shared_ptr<Session> session;
  {
    std::lock_guard<std::mutex> lock(session_mu_);
    stopping_ = true;
    session = std::move(session_);
  }
  session_down_.notify_all();
  if (reconnect_thread_.joinable()) reconnect_thread_.join();
  if (session) session->Shutdown();
  std::vector<std::shared_ptr<Session>> draining;
  {
    std::lock_guard<std::mutex> lock(calls_mu_);
    for (auto& [raw, drained] : draining_) draining.push_back(drained);
    draining_.clear();
  }
  for (auto& drained : draining) drained->Shutdown();
}

void SessionLink::StartOnce() {
  std::call_once(started_, [this] {
    Connect().IgnoreError();  // no shm yet: calls go plain meanwhile
    std::lock_guard<std::mutex> lock(session_mu_);
    if (!stopping_) StartReconnectThreadLocked();
  });
}

void SessionLink::StartReconnectThreadLocked() {
  absl::StatusOr<shm::Thread> thread =
      shm::Thread::Start("shm-reconnect", [this] { ReconnectLoop(); });
  if (thread.ok()) {
    reconnect_thread_ = *std::move(thread);
    return;
  }
  next_reconnect_thread_try_ = absl::Now() + options_.reconnect_backoff_max;
  ShmLog("shm channel to ", PrintableSocketPath(shm_path_),
         ": no reconnect thread (", thread.status().message(),
         "); tried again in ",
         absl::FormatDuration(options_.reconnect_backoff_max),
         ", calls go plain while there is no session");
}

void SessionLink::ReconnectLoop() {
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
    // this keeps a crash loop from turning into a connect storm. After a
    // goaway, try at once: in a rolling restart the successor already
    // listens, and every call until its session is up goes plain.
    if (!std::exchange(reconnect_now_, false)) {
      session_down_.wait_for(lock, absl::ToChronoNanoseconds(backoff),
                             [&] { return stopping_; });
    }
    if (stopping_) break;
    lock.unlock();
    const absl::Status connected = Connect();
    lock.lock();
    if (!connected.ok()) {
      backoff = std::min(backoff * 2, options_.reconnect_backoff_max);
    }
  }
}

absl::Status SessionLink::Connect() {
  std::lock_guard<std::mutex> connecting(connect_mu_);
  {
    std::lock_guard<std::mutex> lock(session_mu_);
    if (session_ && session_->alive()) return absl::OkStatus();
  }
  absl::StatusOr<Handshaken> handshaken = ClientHandshake(shm_path_, options_);
  if (!handshaken.ok()) {
    LogConnectFailure(handshaken.status());
    return handshaken.status();
  }
  std::weak_ptr<SessionLink> weak = weak_from_this();
  // The closed handler learns which session closed through a weak pointer
  // filled in before the session starts.
  auto self = std::make_shared<std::weak_ptr<Session>>();
  std::shared_ptr<Session> session = Session::Create(
      std::move(*handshaken),
      [weak, self](const shm::ReceivedMessage& message) {
        if (auto link = weak.lock()) link->OnFrame(message, *self);
      },
      [weak, self](const absl::Status& status) {
        if (auto link = weak.lock()) link->OnClosed(self->lock(), status);
      },
      options_.max_block_bytes, options_.stalled_peer_timeout);
  *self = session;
  std::shared_ptr<Session> replaced;
  {
    std::lock_guard<std::mutex> lock(session_mu_);
    if (stopping_) return absl::CancelledError("channel is being destroyed");
    // Started under the lock: whoever shuts it down reads session_ after.
    if (absl::Status started = session->Start(); !started.ok()) {
      session->Shutdown();  // no thread ran: closes the connection only
      LogConnectFailure(started);
      return started;
    }
    replaced = std::exchange(session_, session);
    if (replaced) replaced_sessions_ += replaced->send_path_stats();
  }
  sessions_opened_.fetch_add(1, std::memory_order_relaxed);
  if (replaced) replaced->Shutdown();
  return absl::OkStatus();
}

void SessionLink::LogConnectFailure(const absl::Status& status) {
  // A server without an shm socket is the documented plain case, and a
  // restarting server is retried with backoff: neither is news. Anything
  // else (no memory for the segment, a refusal, a bad peer) is said once per
  // distinct reason, so a channel that stays plain says why.
  if (IsNoShmSocket(status) || status.ToString() == last_logged_failure_) {
    return;
  }
  last_logged_failure_ = status.ToString();
  ShmLog("client to ", PrintableSocketPath(shm_path_),
         ": no shm session, calls go plain: ", last_logged_failure_);
}

std::shared_ptr<Session> SessionLink::session() {
  std::lock_guard<std::mutex> lock(session_mu_);
  if (session_ && session_->alive()) return session_;
  if (!reconnect_thread_.joinable() && !stopping_ &&
      next_reconnect_thread_try_ != absl::InfinitePast() &&
      absl::Now() >= next_reconnect_thread_try_) {
    StartReconnectThreadLocked();  // it failed to start before
  }
  return nullptr;
}

uint64_t SessionLink::Register(const std::shared_ptr<ClientCall>& call,
                               const Session& session) {
  std::lock_guard<std::mutex> lock(calls_mu_);
  // A session marks itself dead before OnClosed takes calls_mu_ to abort
  // the registered calls, so a call either is aborted there or sees this.
  // A draining session is closed once it has no calls: a call registered on
  // it after that check would be lost with it.
  if (!session.alive() || draining_.count(&session) != 0) return 0;
  const uint64_t id = next_stream_id_++;
  calls_.emplace(id, RegisteredCall{call, &session});
  return id;
}

void SessionLink::Unregister(uint64_t stream_id) {
  std::shared_ptr<ClientCall> call;  // destroyed after the lock is released
  std::shared_ptr<Session> drained;
  {
    std::lock_guard<std::mutex> lock(calls_mu_);
    auto it = calls_.find(stream_id);
    if (it == calls_.end()) return;
    const Session* session = it->second.session;
    call = std::move(it->second.call);
    calls_.erase(it);
    auto draining = draining_.find(session);
    if (draining != draining_.end() && !HasCallsLocked(session)) {
      drained = draining->second;
    }
  }
  // Without waiting: the caller may hold locks the session thread takes.
  if (drained) drained->Close();
}

bool SessionLink::HasCallsLocked(const Session* session) const {
  for (const auto& [id, registered] : calls_) {
    if (registered.session == session) return true;
  }
  return false;
}

void SessionLink::OnGoAway(const std::shared_ptr<Session>& session) {
  {
    std::lock_guard<std::mutex> lock(session_mu_);
    if (session_ == session) {
      session_ = nullptr;  // no new calls on it
      reconnect_now_ = true;
    }
  }
  bool idle;
  {
    std::lock_guard<std::mutex> lock(calls_mu_);
    if (!draining_.emplace(session.get(), session).second) return;
    idle = !HasCallsLocked(session.get());
  }
  ShmLog("client session to ", PrintableSocketPath(shm_path_),
         ": the server is shutting down; calls under way finish on it, new "
         "calls go plain until a session reopens");
  if (idle) session->Close();
  session_down_.notify_all();  // look for the server's successor
}

void SessionLink::OnFrame(const shm::ReceivedMessage& message,
                          const std::weak_ptr<Session>& from) {
  if (message.descriptor.type ==
      static_cast<uint16_t>(codec::FrameType::kGoAway)) {
    if (std::shared_ptr<Session> session = from.lock()) {
      session->Release(message);
      OnGoAway(session);
    }
    return;
  }
  std::shared_ptr<ClientCall> call;
  {
    std::lock_guard<std::mutex> lock(calls_mu_);
    auto it = calls_.find(message.descriptor.tag);
    if (it != calls_.end()) call = it->second.call;
  }
  if (call) {
    call->OnFrame(message);
    return;
  }
  // The call already ended (cancelled, deadline): nothing waits for this.
  if (std::shared_ptr<Session> session = from.lock()) session->Release(message);
}

void SessionLink::OnClosed(const std::shared_ptr<Session>& session,
                           const absl::Status& status) {
  bool drained = false;
  {
    std::lock_guard<std::mutex> lock(calls_mu_);
    if (session) drained = draining_.erase(session.get()) != 0;
  }
  if (drained) {
    sessions_drained_.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(session_mu_);
    replaced_sessions_ += session->send_path_stats();  // not session_ now
  } else {
    ShmLog("client session to ", PrintableSocketPath(shm_path_),
           " closed: ", status.ToString());
    std::lock_guard<std::mutex> lock(session_mu_);
    if (session != nullptr && session_ == session) {
      // Let go of it now, not when a successor replaces it (the server may
      // never come back): once its calls have ended too, both arenas are
      // unmapped and the memfds closed (2 x arena_bytes, 128 MiB by
      // default, the dead server's included).
      replaced_sessions_ += session->send_path_stats();
      session_ = nullptr;
    }
  }
  sessions_closed_.fetch_add(1, std::memory_order_relaxed);
  if (session) {
    blocks_reclaimed_.fetch_add(session->blocks_reclaimed(),
                                std::memory_order_relaxed);
  }
  // Only this session's calls: a channel made meanwhile may already have
  // opened the next session (its session went dead before this ran) and
  // put new calls on it.
  std::vector<std::shared_ptr<ClientCall>> calls;
  {
    std::lock_guard<std::mutex> lock(calls_mu_);
    for (auto& [id, registered] : calls_) {
      if (session == nullptr || registered.session == session.get()) {
        calls.push_back(registered.call);
      }
    }
  }
  for (auto& call : calls) call->OnSessionClosed(&calls_aborted_by_close_);
  {
    std::lock_guard<std::mutex> lock(session_mu_);  // pairs with the wait
  }
  session_down_.notify_all();
}

LinkStats SessionLink::Stats() {
  LinkStats stats;
  stats.sessions_opened = sessions_opened_.load(std::memory_order_relaxed);
  stats.sessions_closed = sessions_closed_.load(std::memory_order_relaxed);
  stats.sessions_drained = sessions_drained_.load(std::memory_order_relaxed);
  stats.calls_aborted_by_close =
      calls_aborted_by_close_.load(std::memory_order_relaxed);
  stats.blocks_reclaimed = blocks_reclaimed_.load(std::memory_order_relaxed);
  std::shared_ptr<Session> current;
  {
    std::lock_guard<std::mutex> lock(session_mu_);
    current = session_;
    stats.send_paths = replaced_sessions_;
  }
  if (current) {
    stats.send_paths += current->send_path_stats();
    stats.session_alive = current->alive();
    stats.busy_calls = current->busy_streams();
    stats.session = current->Stats();
  }
  return stats;
}

}  // namespace shmgrpc::transport
