#include "shm/uds.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "shm/deadline.h"

namespace shmgrpc::shm {
namespace {

absl::Status SocketError(absl::string_view what, int err) {
  if (err == EPIPE || err == ECONNRESET || err == ENOTCONN) {
    return absl::UnavailableError(
        absl::StrCat(what, ": peer closed (", strerror(err), ")"));
  }
  return absl::InternalError(absl::StrCat(what, ": ", strerror(err)));
}

int64_t MillisCeil(absl::Duration d) {
  if (d == absl::InfiniteDuration()) return -1;
  if (d <= absl::ZeroDuration()) return 0;
  return absl::ToInt64Milliseconds(d + absl::Nanoseconds(999999));
}

}  // namespace

absl::Status SendWithFd(int sock, const void* data, size_t len, int fd) {
  iovec iov{const_cast<void*>(data), len};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (fd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
  }
  size_t sent = 0;
  while (sent < len) {
    ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        pollfd pfd{sock, POLLOUT, 0};
        poll(&pfd, 1, 100);
        continue;
      }
      return SocketError("sendmsg", errno);
    }
    sent += static_cast<size_t>(n);
    // The fd went with the first bytes; the rest is plain data.
    iov.iov_base = static_cast<char*>(iov.iov_base) + n;
    iov.iov_len -= static_cast<size_t>(n);
    msg.msg_control = nullptr;
    msg.msg_controllen = 0;
  }
  return absl::OkStatus();
}

absl::Status RecvWithFd(int sock, void* data, size_t len, int* fd,
                        absl::Duration timeout) {
  *fd = -1;
  // Monotonic: a step of the wall clock must not stretch or cut the wait.
  const SteadyTime deadline = SteadyDeadlineAfter(timeout);
  const bool forever = deadline == kNoDeadline;
  size_t received = 0;
  absl::Status status;
  while (received < len) {
    pollfd pfd{sock, POLLIN, 0};
    const int ready =
        poll(&pfd, 1,
             forever ? -1
                     : MillisCeil(absl::FromChrono(
                           deadline - std::chrono::steady_clock::now())));
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) {
      status = absl::DeadlineExceededError(
          absl::StrCat("timed out after ", received, " of ", len, " bytes"));
      break;
    }
    iovec iov{static_cast<char*>(data) + received, len - received};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    const ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      status = SocketError("recvmsg", errno);
      break;
    }
    bool extra_fds = false;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr;
         c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int received_fd;
        std::memcpy(&received_fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        if (*fd < 0) {
          *fd = received_fd;
        } else {
          close(received_fd);
          extra_fds = true;
        }
      }
    }
    if (extra_fds) {
      status = absl::InvalidArgumentError("peer sent more than one fd");
      break;
    }
    if ((msg.msg_flags & MSG_CTRUNC) != 0) {
      status = absl::InvalidArgumentError("peer sent truncated ancillary data");
      break;
    }
    if (n == 0) {
      status = absl::UnavailableError(
          absl::StrCat("peer closed after ", received, " of ", len, " bytes"));
      break;
    }
    received += static_cast<size_t>(n);
  }
  if (!status.ok() && *fd >= 0) {
    close(*fd);
    *fd = -1;
  }
  return status;
}

}  // namespace shmgrpc::shm
