#include "transport/shm_server.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"
#include "codec/frame_type.h"
#include "grpcpp/support/channel_arguments.h"
#include "transport/arena_replies.h"
#include "transport/flow_window.h"
#include "transport/handshake.h"
#include "transport/log.h"
#include "transport/shm_channel.h"

namespace shmgrpc {

using transport::Handshaken;
using transport::InjectedCall;
using transport::Session;
using transport::ShmLog;
using transport::WindowLimits;

struct ShmServer::ServerSession {
  std::shared_ptr<Session> session;
  // Where this session's injected calls complete, drained by a thread of
  // this session alone (see StartCompletionThreadLocked).
  grpc::CompletionQueue cq;
  std::mutex mu;
  std::map<uint64_t, std::shared_ptr<InjectedCall>> calls;
  bool closed = false;  // no new calls
  bool cq_shut_down = false;
  // When its client was told to drain it (guarded by ShmServer::mu_).
  absl::Time goaway_at = absl::InfiniteFuture();

  // mu held. Shuts the queue down once nothing can complete on it again:
  // the session is closed (no new calls) and every call is done (a call
  // leaves `calls` only with no op outstanding). With `force`, at once.
  void ShutDownQueueIfIdleLocked(bool force = false) {
    if (cq_shut_down || !(force || (closed && calls.empty()))) return;
    cq_shut_down = true;
    cq.Shutdown();
  }
};

absl::StatusOr<std::unique_ptr<ShmServer>> ShmServer::Start(
    grpc::Server* server, const std::string& target, const Options& options) {
  const std::string path = UnixPathOf(target);
  if (path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shm needs a unix: or unix-abstract: target (got '", target, "')"));
  }
  const std::string shm_path = path + ".shm";
  // Before the socket exists: without it Shutdown() could not stop the
  // accept loop.
  const int wake_fd = eventfd(0, EFD_CLOEXEC);
  if (wake_fd < 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("shm server: eventfd: ", strerror(errno)));
  }
  absl::StatusOr<int> fd = transport::ListenUnix(shm_path);
  if (!fd.ok()) {
    close(wake_fd);
    return fd.status();
  }
  auto shm_server = std::unique_ptr<ShmServer>(
      new ShmServer(server, shm_path, *fd, wake_fd, options));
  absl::StatusOr<shm::Thread> accept = shm::Thread::Start(
      "shm-accept", [raw = shm_server.get()] { raw->AcceptLoop(); });
  if (!accept.ok()) return accept.status();  // the destructor cleans up
  shm_server->accept_thread_ = *std::move(accept);
  return shm_server;
}

ShmServer::ShmServer(grpc::Server* server, std::string shm_path, int listen_fd,
                     int wake_fd, const Options& options)
    : shm_path_(std::move(shm_path)),
      options_(options),
      listen_fd_(listen_fd),
      wake_fd_(wake_fd) {
  struct stat file;
  if (!transport::IsAbstractSocketPath(shm_path_) &&
      stat(shm_path_.c_str(), &file) == 0) {
    socket_file_dev_ = file.st_dev;
    socket_file_ino_ = file.st_ino;
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  inproc_channel_ = server->InProcessChannel(args);
  core_cq_ = std::make_unique<transport::CoreCallbackQueue>();
}

ShmServer::~ShmServer() { Shutdown(absl::Now()); }

absl::Status ShmServer::StartCompletionThreadLocked(
    std::shared_ptr<ServerSession> session) {
  auto worker = std::make_unique<ReapableThread>();
  ReapableThread* raw = worker.get();
  absl::StatusOr<shm::Thread> thread = shm::Thread::Start(
      "shm-completion", [this, s = std::move(session), raw]() mutable {
        void* tag;
        bool ok;
        while (s->cq.Next(&tag, &ok)) {
          auto* t = static_cast<InjectedCall::Tag*>(tag);
          t->call->OnCompletion(t->op, ok);
        }
        s.reset();  // may be the last reference: the session is freed here
        MarkFinished(raw);
      });
  if (!thread.ok()) return thread.status();
  raw->thread = *std::move(thread);
  completion_threads_.push_back(std::move(worker));
  return absl::OkStatus();
}

void ShmServer::MarkFinished(ReapableThread* thread) {
  thread->done.store(true, std::memory_order_release);
  const uint64_t one = 1;
  if (write(wake_fd_, &one, sizeof(one)) < 0) {
    // Joined at the next connection or at Shutdown() instead.
    ShmLog("cannot wake the accept loop: ", strerror(errno));
  }
}

void ShmServer::JoinFinishedThreadsLocked() {
  for (auto* threads : {&handshake_threads_, &completion_threads_}) {
    for (auto it = threads->begin(); it != threads->end();) {
      if ((*it)->done.load(std::memory_order_acquire)) {
        (*it)->thread.join();
        it = threads->erase(it);
      } else {
        ++it;
      }
    }
  }
}

void ShmServer::AcceptLoop() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      ShmLog("accept loop: poll: ", strerror(errno));
      return;
    }
    if (fds[1].revents != 0) {
      uint64_t wakes;
      if (read(wake_fd_, &wakes, sizeof(wakes)) < 0) {
        ShmLog("accept loop: reading its eventfd: ", strerror(errno));
      }
      std::lock_guard<std::mutex> lock(mu_);
      if (shutting_down_) return;
      JoinFinishedThreadsLocked();
      continue;
    }
    const int sock = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (sock < 0) continue;
    std::unique_lock<std::mutex> lock(mu_);
    if (shutting_down_) {
      close(sock);
      return;
    }
    // Join finished threads, then start a handshake for this connection.
    JoinFinishedThreadsLocked();
    if (handshake_threads_.size() >= kMaxConcurrentHandshakes) {
      lock.unlock();
      RefuseConnection(sock, transport::kServerBusy, "busy",
                       absl::StrCat(kMaxConcurrentHandshakes,
                                    " handshakes already under way; its "
                                    "calls go plain"));
      continue;
    }
    auto handshake = std::make_unique<ReapableThread>();
    ReapableThread* raw = handshake.get();
    absl::StatusOr<shm::Thread> thread =
        shm::Thread::Start("shm-handshake", [this, sock, raw] {
          Handshake(sock);
          MarkFinished(raw);
        });
    if (!thread.ok()) {
      RefuseConnection(
          sock, transport::kNoThread, "no thread",
          absl::StrCat("no thread for its handshake (",
                       thread.status().message(), "); its calls go plain"));
      continue;
    }
    raw->thread = *std::move(thread);
    handshake_threads_.push_back(std::move(handshake));
  }
}

void ShmServer::RefuseConnection(int sock, transport::HandshakeRefusal reason,
                                 const std::string& kind,
                                 absl::string_view why) {
  handshakes_refused_.fetch_add(1, std::memory_order_relaxed);
  uint64_t not_logged;
  if (connections_log_.ShouldLog(kind, absl::Now(), &not_logged)) {
    ShmLog("refused shm connection on ",
           transport::PrintableSocketPath(shm_path_), ": ", why,
           transport::LogRateLimiter::NotLoggedNote(not_logged));
  }
  if (reason != transport::kAccepted) transport::RefuseHandshake(sock, reason);
  close(sock);
}

bool ShmServer::ReserveSessionSlot() {
  std::lock_guard<std::mutex> lock(mu_);
  if (options_.max_sessions != 0 &&
      sessions_.size() + sessions_starting_ >= options_.max_sessions) {
    return false;
  }
  ++sessions_starting_;
  return true;
}

void ShmServer::Handshake(int sock) {
  if (!ReserveSessionSlot()) {
    RefuseConnection(sock, transport::kTooManySessions, "session limit",
                     absl::StrCat("at the limit of ", options_.max_sessions,
                                  " sessions; its calls go plain"));
    return;
  }
  // The session's two threads are started before the welcome: once its
  // client has it, it sends calls, and a session closed then for want of a
  // thread (a pids limit) would fail them. Without them the client is
  // refused (kNoThread) and goes plain.
  auto server_session = std::make_shared<ServerSession>();
  std::optional<shm::ReservedThread> session_thread;
  absl::StatusOr<Handshaken> handshaken =
      transport::ServerHandshake(sock, options_, [&]() -> absl::Status {
        absl::StatusOr<shm::ReservedThread> reserved =
            shm::ReservedThread::Start();
        if (!reserved.ok()) return reserved.status();
        session_thread.emplace(*std::move(reserved));
        std::lock_guard<std::mutex> lock(mu_);
        return StartCompletionThreadLocked(server_session);
      });
  if (!handshaken.ok()) {
    session_thread.reset();  // ends it unused
    {
      // Its completion thread, if it started, ends.
      std::lock_guard<std::mutex> session_lock(server_session->mu);
      server_session->closed = true;
      server_session->ShutDownQueueIfIdleLocked();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      --sessions_starting_;
    }
    // ServerHandshake already sent any refusal.
    RefuseConnection(sock, transport::kAccepted,
                     absl::StatusCodeToString(handshaken.status().code()),
                     handshaken.status().ToString());
    return;
  }
  const pid_t peer_pid = handshaken->peer.pid;
  std::weak_ptr<ServerSession> weak = server_session;
  server_session->session = Session::Create(
      std::move(*handshaken),
      [this, weak](const shm::ReceivedMessage& message) {
        if (auto s = weak.lock()) OnFrame(s, message);
      },
      [this, weak, peer_pid](const absl::Status& why) {
        // A client that goes away is routine; anything else (a protocol
        // error, a broken inline record) is worth a line, at most one per
        // 10 s: a client could end session after session so.
        uint64_t not_logged;
        if (!absl::IsUnavailable(why) && !why.ok() &&
            connections_log_.ShouldLog("session ended", absl::Now(),
                                       &not_logged)) {
          ShmLog("session with pid ", peer_pid, " on ",
                 transport::PrintableSocketPath(shm_path_),
                 " ended: ", why.ToString(),
                 transport::LogRateLimiter::NotLoggedNote(not_logged));
        }
        if (auto s = weak.lock()) OnClosed(s);
      },
      options_.max_block_bytes, options_.stalled_peer_timeout);
  transport::RegisterForArenaReplies(server_session->session);
  sessions_accepted_.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(mu_);
  --sessions_starting_;
  // Listed before it starts, so its OnClosed (which waits for mu_) always
  // finds it; Shutdown() joins this thread before it reads sessions_. One
  // that completes while the server shuts down is served and drained like
  // the others: its client may already be sending calls on it.
  sessions_.push_back(server_session);
  server_session->session->Start(*std::move(session_thread));
  if (shutting_down_) SendGoAwayLocked(*server_session);
}

void ShmServer::SendGoAwayLocked(ServerSession& s) {
  if (s.goaway_at != absl::InfiniteFuture()) return;
  s.goaway_at = absl::Now();
  // Never waits: a client that does not read (stopped) gets it late or not
  // at all, and is then closed as idle or at the deadline.
  s.session->PostControl(codec::FrameType::kGoAway, 0, 0,
                         s.goaway_at + options_.handshake_timeout);
}

void ShmServer::OnFrame(const std::shared_ptr<ServerSession>& s,
                        const shm::ReceivedMessage& message) {
  const uint64_t stream_id = message.descriptor.tag;
  std::shared_ptr<InjectedCall> call;
  {
    std::lock_guard<std::mutex> lock(s->mu);
    auto it = s->calls.find(stream_id);
    if (it != s->calls.end()) {
      call = it->second;
    } else if (message.descriptor.type ==
                   static_cast<uint16_t>(codec::FrameType::kCallHeaders) &&
               !s->closed) {
      std::weak_ptr<ServerSession> weak = s;
      const WindowLimits own_window = transport::OwnWindowLimits(
          options_.stream_window_bytes, options_.stream_window_messages);
      // Without a slot the call refuses the stream (only a client ignoring
      // the limit it was given sends one).
      transport::StreamSlot slot = s->session->stream_slots().TryOpen();
      if (!slot.held()) {
        streams_over_limit_.fetch_add(1, std::memory_order_relaxed);
      }
      call = std::make_shared<InjectedCall>(
          s->session, stream_id, &s->cq,
          InjectedCall::CoreTarget{transport::CoreChannelOf(*inproc_channel_),
                                   core_cq_->get()},
          transport::SenderLimits(own_window, message.descriptor.aux),
          own_window, std::move(slot), [weak](uint64_t id) {
            if (auto session = weak.lock()) {
              std::shared_ptr<InjectedCall> done;
              std::lock_guard<std::mutex> lock(session->mu);
              auto it = session->calls.find(id);
              if (it != session->calls.end()) {
                done = std::move(it->second);
                session->calls.erase(it);
              }
              session->ShutDownQueueIfIdleLocked();
            }
          });
      s->calls.emplace(stream_id, call);
      calls_injected_.fetch_add(1, std::memory_order_relaxed);
    }
  }
  if (call) {
    call->OnFrame(message);
  } else {
    s->session->Release(message);  // a frame for a call that already ended
  }
}

void ShmServer::OnClosed(const std::shared_ptr<ServerSession>& s) {
  std::vector<std::shared_ptr<InjectedCall>> calls;
  {
    std::lock_guard<std::mutex> lock(s->mu);
    s->closed = true;
    for (auto& [id, call] : s->calls) calls.push_back(call);
    s->ShutDownQueueIfIdleLocked();
  }
  for (auto& call : calls) call->Cancel();
  // Counted and forgotten in one step under mu_, so Stats() never sees the
  // session gone but its close not yet counted. Its arenas are unmapped once
  // the cancelled calls and the session thread let go of it.
  std::lock_guard<std::mutex> lock(mu_);
  sessions_closed_.fetch_add(1, std::memory_order_relaxed);
  calls_cancelled_by_close_.fetch_add(calls.size(), std::memory_order_relaxed);
  blocks_reclaimed_.fetch_add(s->session->blocks_reclaimed(),
                              std::memory_order_relaxed);
  closed_sessions_paths_ += s->session->send_path_stats();
  sessions_.erase(std::remove(sessions_.begin(), sessions_.end(), s),
                  sessions_.end());
  session_closed_.notify_all();
}

namespace {

bool CallsEnded(
    std::mutex& mu,
    const std::map<uint64_t, std::shared_ptr<InjectedCall>>& calls) {
  std::lock_guard<std::mutex> lock(mu);
  return calls.empty();
}

}  // namespace

void ShmServer::RemoveSocketFile() {
  struct stat file;
  if (socket_file_ino_ != 0 && stat(shm_path_.c_str(), &file) == 0 &&
      file.st_dev == socket_file_dev_ && file.st_ino == socket_file_ino_) {
    unlink(shm_path_.c_str());
  }
}

void ShmServer::DrainSessions(absl::Time deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    const absl::Time now = absl::Now();
    if (sessions_.empty() || now >= deadline) return;
    std::vector<std::shared_ptr<ServerSession>> idle;
    for (const auto& s : sessions_) {
      std::lock_guard<std::mutex> session_lock(s->mu);
      if (s->calls.empty() &&
          now - s->goaway_at >= options_.handshake_timeout) {
        idle.push_back(s);
      }
    }
    if (!idle.empty()) {
      // Outside mu_: closing runs OnClosed, which takes it.
      lock.unlock();
      for (auto& s : idle) s->session->Shutdown();
      lock.lock();
      continue;
    }
    // Woken by each close; the grace is checked every 10 ms.
    session_closed_.wait_until(
        lock,
        absl::ToChronoTime(std::min(deadline, now + absl::Milliseconds(10))));
  }
}

void ShmServer::Shutdown(absl::Time deadline) {
  std::vector<std::shared_ptr<ServerSession>> sessions;
  std::list<std::unique_ptr<ReapableThread>> handshakes, completions;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutting_down_) return;
    shutting_down_ = true;
  }
  const uint64_t one = 1;
  if (write(wake_fd_, &one, sizeof(one)) < 0) {
    ShmLog("shutdown: cannot wake the accept loop: ", strerror(errno));
  }
  accept_thread_.join();
  // From here a client's reconnect finds no shm socket (or a successor's).
  close(listen_fd_);
  RemoveSocketFile();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& s : sessions_) SendGoAwayLocked(*s);
    handshakes.swap(handshake_threads_);
  }
  for (auto& handshake : handshakes) handshake->thread.join();
  DrainSessions(deadline);
  {
    std::lock_guard<std::mutex> lock(mu_);
    sessions.swap(sessions_);
  }
  // Past the deadline: what still runs is cancelled.
  for (auto& s : sessions) s->session->Shutdown();
  // Wait (up to 5 s) for injected calls to send their status and complete
  // every op; name the ones that do not.
  for (auto& s : sessions) {
    for (int i = 0; i < 5000 && !CallsEnded(s->mu, s->calls); ++i) {
      usleep(1000);
    }
    std::vector<std::shared_ptr<InjectedCall>> stuck;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      for (auto& [id, call] : s->calls) stuck.push_back(call);
    }
    // Outside s->mu: a session's lock and a call's are never held together
    // (see InjectedCall::TakeIfDoneLocked).
    for (auto& call : stuck) {
      ShmLog("shutdown: call did not end in 5 s: ", call->DebugString());
    }
    std::lock_guard<std::mutex> lock(s->mu);
    s->ShutDownQueueIfIdleLocked(/*force=*/true);
  }
  // Sessions that closed earlier shut their queues down themselves once
  // their calls were done.
  {
    std::lock_guard<std::mutex> lock(mu_);
    completions.swap(completion_threads_);
  }
  for (auto& completion : completions) completion->thread.join();
  close(wake_fd_);
}

ServerStats ShmServer::Stats() {
  ServerStats stats;
  std::lock_guard<std::mutex> lock(mu_);  // see OnClosed
  stats.sessions_accepted = sessions_accepted_.load();
  stats.handshakes_refused = handshakes_refused_.load();
  stats.calls_injected = calls_injected_.load();
  stats.sessions_closed = sessions_closed_.load();
  stats.calls_cancelled_by_close = calls_cancelled_by_close_.load();
  stats.streams_over_limit = streams_over_limit_.load();
  stats.blocks_reclaimed = blocks_reclaimed_.load();
  stats.worker_threads = handshake_threads_.size() + completion_threads_.size();
  transport::SendPathStats paths = closed_sessions_paths_;
  for (const auto& s : sessions_) {
    ++stats.sessions_open;
    paths += s->session->send_path_stats();
    stats.busy_calls += s->session->busy_streams();
    stats.blocks_in_use += s->session->Stats().arena.blocks_in_use;
    std::lock_guard<std::mutex> session_lock(s->mu);
    stats.calls_active += s->calls.size();
  }
  stats.messages_chained = paths.chained;
  stats.inline_arena_full = paths.inline_arena_full;
  stats.inline_too_large = paths.inline_too_large;
  stats.arena_replies = paths.arena_slices;
  stats.replies_deferred = paths.replies_deferred;
  return stats;
}

}  // namespace shmgrpc
