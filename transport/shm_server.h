// ShmServer: attaches shared memory to an unchanged, started grpc::Server.
//
//   auto server = builder.BuildAndStart();           // listens on unix:/p
//   auto shm = shmgrpc::ShmServer::Start(server.get(), "unix:/p", options);
//   ...
//   shm->Shutdown(deadline);   // then server->Shutdown(deadline)
//
// It listens on "/p.shm", handshakes each client (one thread per handshake,
// bounded by the handshake timeout and joined once done; a bad or slow client
// costs only its own connection, with a logged reason; at most
// kMaxConcurrentHandshakes at once, further connections are refused until
// one ends, so a flood of connections cannot exhaust the server's threads),
// runs one session per
// client (up to Options::max_sessions; forgotten, and its arenas unmapped,
// once the client is gone), and injects each stream into the server through
// its in-process channel. Each session's injected calls complete on a
// completion-queue thread of that session: a client that stops reading
// (stopped, not dead) makes only its own calls wait for ring space, never
// another client's.
//
// Shutdown is graceful, as grpc::Server's is: the shm socket goes away at
// once, every client is told (kGoAway) and puts its new calls on plain gRPC
// (served by the grpc::Server, still up), and the calls under way finish on
// shared memory; only those still running at the deadline are cancelled.
#ifndef SHMGRPC_TRANSPORT_SHM_SERVER_H_
#define SHMGRPC_TRANSPORT_SHM_SERVER_H_

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/completion_queue.h"
#include "grpcpp/server.h"
#include "shm/thread.h"
#include "transport/core_call.h"
#include "transport/handshake.h"
#include "transport/log_rate_limiter.h"
#include "transport/options.h"
#include "transport/server_call.h"
#include "transport/session.h"

namespace shmgrpc {

struct ServerStats {
  uint64_t sessions_accepted = 0;
  uint64_t handshakes_refused = 0;  // junk, timeouts, versions, policy
  uint64_t sessions_open = 0;       // not yet counted in sessions_closed
  uint64_t sessions_closed = 0;     // client gone or connection broken
  uint64_t calls_injected = 0;
  uint64_t calls_active = 0;
  // Of those, the ones whose client awaits an answer: unary calls, streams
  // with a request the handler has not answered yet (per session, past
  // WaitOptions::max_busy_streams_for_spin of them its thread stops spinning
  // for frames when other threads take its core).
  uint64_t busy_calls = 0;
  uint64_t calls_cancelled_by_close = 0;  // live when their client went
  // Streams refused because their session had Options::max_concurrent_streams
  // open already: only a client ignoring the limit sends one.
  uint64_t streams_over_limit = 0;
  // Responses that needed more than one block: chained over several
  // blocks, or sent inline on the socket (by reason).
  uint64_t messages_chained = 0;
  uint64_t inline_arena_full = 0;
  uint64_t inline_too_large = 0;
  // Replies serialized straight into the arena (ArenaReplyInterceptorFactory)
  // and sent without a copy.
  uint64_t arena_replies = 0;
  // Unary replies and stream responses the handler's thread could not send
  // at once (the client's ring full, no single block free, or an earlier
  // frame of the stream still waiting), sent by the session's completion
  // thread instead, one thread hop later.
  uint64_t replies_deferred = 0;
  // Blocks of the server's arenas: held by open sessions' clients now, and
  // taken back from clients that went away.
  uint64_t blocks_in_use = 0;
  uint64_t blocks_reclaimed = 0;
  // Handshake and completion-queue threads the server holds: running, or
  // finished and about to be joined (each wakes the accept loop to join it).
  // 0 once every session has closed.
  uint64_t worker_threads = 0;
};

class ShmServer {
 public:
  // Handshakes under way at once; a connection beyond them is refused
  // (kServerBusy: its client goes plain and retries with backoff).
  static constexpr size_t kMaxConcurrentHandshakes = 64;

  static absl::StatusOr<std::unique_ptr<ShmServer>> Start(
      grpc::Server* server, const std::string& target,
      const Options& options = Options());
  ~ShmServer();

  // Stops accepting sessions, lets the injected calls under way finish until
  // `deadline`, then cancels the rest; returns once every session is closed.
  // Without a deadline it waits for them all, as grpc::Server::Shutdown()
  // does. Clients close their sessions once their calls have ended; a
  // session idle for Options::handshake_timeout after it was told (its
  // client stopped, or from before kGoAway) is closed by the server.
  // Idempotent; the destructor shuts down with no grace.
  void Shutdown(absl::Time deadline);
  void Shutdown(std::chrono::system_clock::time_point deadline) {
    Shutdown(absl::FromChrono(deadline));
  }
  void Shutdown() { Shutdown(absl::InfiniteFuture()); }
  ServerStats Stats();
  const std::string& shm_path() const { return shm_path_; }

 private:
  struct ServerSession;
  // A thread joined once `done` (by the accept loop, which MarkFinished()
  // wakes, or by Shutdown()).
  struct ReapableThread {
    shm::Thread thread;
    std::atomic<bool> done{false};
  };

  ShmServer(grpc::Server* server, std::string shm_path, int listen_fd,
            int wake_fd, const Options& options);
  void AcceptLoop();
  // Counts a handshake about to start against Options::max_sessions; false
  // when the server is at the limit (open sessions plus handshakes started).
  bool ReserveSessionSlot();
  // Counts a refused connection, logs `why` (at most one line per `kind`
  // per 10 s), sends `reason` unless it is kAccepted (a refusal already
  // sent) and closes the socket.
  void RefuseConnection(int sock, transport::HandshakeRefusal reason,
                        const std::string& kind, absl::string_view why);
  void Handshake(int sock);
  void OnFrame(const std::shared_ptr<ServerSession>& session,
               const shm::ReceivedMessage& message);
  void OnClosed(const std::shared_ptr<ServerSession>& session);
  // mu_ held: starts the thread that drains `session`'s completion queue
  // until the queue is shut down (once the session is closed and its calls
  // are done).
  // ResourceExhausted when no thread can be started.
  absl::Status StartCompletionThreadLocked(
      std::shared_ptr<ServerSession> session);
  // The last step of a handshake or completion thread: marks it `done` and
  // wakes the accept loop to join it, so a finished thread's stack is not
  // held until the next connection.
  void MarkFinished(ReapableThread* thread);
  // mu_ held: joins the finished handshake and completion threads.
  void JoinFinishedThreadsLocked();
  // mu_ held, shutting down: tells the client of `session` to drain it.
  void SendGoAwayLocked(ServerSession& session);
  // Waits until every session has closed or `deadline`, closing the ones
  // left idle past the grace (see Shutdown()).
  void DrainSessions(absl::Time deadline);
  // Removes the shm socket file, unless a successor server bound the path
  // meanwhile (its ListenUnix replaced the file with its own).
  void RemoveSocketFile();

  const std::string shm_path_;
  const Options options_;
  const int listen_fd_;
  // The socket file this server bound (0, 0 for an abstract name).
  dev_t socket_file_dev_ = 0;
  ino_t socket_file_ino_ = 0;
  // eventfd that wakes the accept loop: to stop (shutting_down_) or to join
  // finished threads. Closed only after every thread that writes it ended.
  const int wake_fd_;
  std::shared_ptr<grpc::Channel> inproc_channel_;
  // Where injected calls complete (core_call.h); its destructor waits
  // for the last one.
  std::unique_ptr<transport::CoreCallbackQueue> core_cq_;
  shm::Thread accept_thread_;  // started by Start()

  std::mutex mu_;
  bool shutting_down_ = false;
  std::list<std::unique_ptr<ReapableThread>> handshake_threads_;
  std::list<std::unique_ptr<ReapableThread>> completion_threads_;
  std::vector<std::shared_ptr<ServerSession>> sessions_;  // open sessions
  std::condition_variable session_closed_;  // with mu_, for DrainSessions
  size_t sessions_starting_ = 0;  // slots reserved by running handshakes

  std::atomic<uint64_t> sessions_accepted_{0}, handshakes_refused_{0},
      calls_injected_{0}, sessions_closed_{0}, calls_cancelled_by_close_{0},
      blocks_reclaimed_{0}, streams_over_limit_{0};
  // Send paths of closed sessions (guarded by mu_).
  transport::SendPathStats closed_sessions_paths_;
  // Refused handshakes, and sessions ended by an error, are logged one line
  // per kind (status code; "session ended") per 10 s at most: clients retry
  // with backoff, and a junk sender would flood.
  transport::LogRateLimiter connections_log_{absl::Seconds(10)};
};

}  // namespace shmgrpc

#endif  // SHMGRPC_TRANSPORT_SHM_SERVER_H_
