// SessionLink: a client's shm session to one server, shared by every channel
// of this process that names the same handshake socket with the same
// session options, as gRPC shares one subchannel (connection) among its
// channels to one target. N channels to a server cost one pair of arenas,
// one handshake and one spinning session thread per side, not N.
//
// A link keeps its session open: it re-opens it, with exponential backoff,
// whenever it is down (server restarted, server without shm yet). It routes
// incoming frames to calls by stream id, and ends the calls of a session
// that closes UNAVAILABLE. A server shutting down gracefully says so
// (kGoAway): the link then starts no new call on that session (new calls go
// plain until a new session opens), lets its calls finish, and closes it
// after the last one, as a gRPC client drains a connection after GOAWAY.
// The session closes when the last channel using the link lets go of it,
// or, for a shared link, Options::session_linger later (Release).
// Thread-safe.
#ifndef SHMGRPC_TRANSPORT_SESSION_LINK_H_
#define SHMGRPC_TRANSPORT_SESSION_LINK_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "shm/endpoint.h"
#include "shm/thread.h"
#include "transport/options.h"
#include "transport/session.h"

namespace shmgrpc::transport {

class ClientCall;

// What a link's sessions did, all of them so far.
struct LinkStats {
  uint64_t sessions_opened = 0;   // the first one included
  uint64_t sessions_closed = 0;   // peer gone, connection broken, drained
  uint64_t sessions_drained = 0;  // of those: closed after a server's goaway
  uint64_t calls_aborted_by_close = 0;  // ended UNAVAILABLE by a close
  uint64_t blocks_reclaimed = 0;        // our blocks the gone peer still held
  SendPathStats send_paths;             // messages chained or sent inline
  bool session_alive = false;
  uint64_t busy_calls = 0;     // on the current session
  shm::EndpointStats session;  // the current session's; zero when none
};

class SessionLink : public std::enable_shared_from_this<SessionLink> {
 public:
  // The link to `shm_path` for `options`: the one another channel of this
  // process already holds when `shared` and its session options are equal
  // (see SessionKey), else a new one. Either way, unless its session is up,
  // one handshake is tried before it is returned, so that the new channel's
  // first calls can use the session as soon as the server offers one (and
  // do not wait out the link's backoff); the link keeps trying in the
  // background.
  static std::shared_ptr<SessionLink> Get(const std::string& shm_path,
                                          const Options& options, bool shared);
  // A channel lets go of `link`. A shared link is held, and so its session
  // kept open, until Options::session_linger has passed since the last
  // Release (a channel made meanwhile joins it); then the hold ends, and
  // with the last reference the link closes its session, on a thread of
  // its own (not the timer's: closing joins threads). Any thread.
  static void Release(std::shared_ptr<SessionLink> link);
  ~SessionLink();
  SessionLink(const SessionLink&) = delete;
  SessionLink& operator=(const SessionLink&) = delete;

  // The live session, or nullptr.
  std::shared_ptr<Session> session();
  // Calls register once hijacked and unregister when they end. Returns the
  // stream id, or 0 when `session` has closed or is draining meanwhile (go
  // plain).
  uint64_t Register(const std::shared_ptr<ClientCall>& call,
                    const Session& session);
  void Unregister(uint64_t stream_id);

  LinkStats Stats();

 private:
  SessionLink(std::string shm_path, Options options);
  // The fields of `options` a session depends on: channels differing only
  // in per-call options (limits, metadata, methods, stream windows) share.
  static std::string SessionKey(const std::string& shm_path,
                                const Options& options);
  void StartOnce();
  // Holds `self` until linger_until_ (the process's DeadlineTimer keeps
  // it), then lets go of it.
  void HoldUntilLingerEnds(std::shared_ptr<SessionLink> self);
  void OnLingerEnd(std::shared_ptr<SessionLink> self);
  // session_mu_ held, not stopping_: starts the reconnect thread, or logs
  // why not and sets when to try again.
  void StartReconnectThreadLocked();
  // Opens a session unless one is alive. Unavailable when the server has no
  // shm socket (the channels then work over plain gRPC). One at a time:
  // two racing handshakes would each install a session, and the second
  // would end the calls already on the first.
  absl::Status Connect();
  void ReconnectLoop();
  // Only from Connect(), under connect_mu_.
  void LogConnectFailure(const absl::Status& status);
  // `from`: the session that received it (for frames no call takes).
  void OnFrame(const shm::ReceivedMessage& message,
               const std::weak_ptr<Session>& from);
  // The server is shutting `session` down gracefully (see the class comment).
  void OnGoAway(const std::shared_ptr<Session>& session);
  // calls_mu_ held: whether a call still runs on `session`.
  bool HasCallsLocked(const Session* session) const;
  void OnClosed(const std::shared_ptr<Session>& session,
                const absl::Status& status);

  const std::string shm_path_;
  const Options options_;
  bool shared_ = false;  // in the registry (set before it is listed there)
  std::once_flag started_;

  std::mutex linger_mu_;
  // Monotonic, so that a step of the wall clock cannot stretch a linger.
  std::chrono::steady_clock::time_point linger_until_;  // guarded by linger_mu_
  bool linger_held_ = false;  // a hold is scheduled (guarded by linger_mu_)
  std::mutex connect_mu_;     // held through Connect()

  std::mutex session_mu_;
  std::shared_ptr<Session> session_;
  bool stopping_ = false;       // guarded by session_mu_
  bool reconnect_now_ = false;  // after a goaway (guarded by session_mu_)
  std::condition_variable session_down_;  // a close, or stopping_
  // Started once the first session was tried (guarded by session_mu_). If
  // no thread could be started, session() tries again, at most once per
  // reconnect_backoff_max: without it a session that goes is not replaced.
  shm::Thread reconnect_thread_;
  absl::Time next_reconnect_thread_try_ = absl::InfinitePast();
  std::string last_logged_failure_;  // guarded by connect_mu_
  // Send paths of sessions no longer current: replaced, or drained after a
  // goaway (guarded by session_mu_).
  SendPathStats replaced_sessions_;

  // A call and the session it was registered on: a session that closes
  // ends only its own calls, not those a newer session already carries.
  struct RegisteredCall {
    std::shared_ptr<ClientCall> call;
    const Session* session;
  };
  std::mutex calls_mu_;
  std::unordered_map<uint64_t, RegisteredCall> calls_;
  uint64_t next_stream_id_ = 1;
  // Sessions after a goaway, until they close: they take no new call, and
  // are closed once no call runs on them (guarded by calls_mu_).
  std::unordered_map<const Session*, std::shared_ptr<Session>> draining_;

  std::atomic<uint64_t> sessions_opened_{0}, sessions_closed_{0},
      sessions_drained_{0}, calls_aborted_by_close_{0}, blocks_reclaimed_{0};
};

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_SESSION_LINK_H_
