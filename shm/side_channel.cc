#include "shm/side_channel.h"

#include <poll.h>
#include <sys/socket.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "shm/deadline.h"

namespace shmgrpc::shm {
namespace {

constexpr uint8_t kDoorbellToken = 0x01;
constexpr uint8_t kRecordToken = 0x02;
constexpr size_t kReadChunkBytes = 64 * 1024;

absl::Status SocketError(absl::string_view what, int err) {
  if (err == EPIPE || err == ECONNRESET || err == ENOTCONN) {
    return absl::UnavailableError(
        absl::StrCat(what, ": peer closed (", strerror(err), ")"));
  }
  return absl::InternalError(absl::StrCat(what, ": ", strerror(err)));
}

}  // namespace

void SideChannel::StopWriter() {
  {
    std::lock_guard<std::mutex> lock(write_mu_);
    stopping_ = true;
  }
  outbox_ready_.notify_all();
  outbox_drained_.notify_all();
  if (writer_.joinable()) writer_.join();
}

absl::Status SideChannel::WriteDoorbellLocked() {
  const uint8_t byte = kDoorbellToken;
  for (;;) {
    const ssize_t n = send(sock_, &byte, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n == 1) return absl::OkStatus();
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return absl::OkStatus();
    }
    return SocketError("doorbell send", errno);
  }
}

absl::Status SideChannel::Ring() {
  std::lock_guard<std::mutex> lock(write_mu_);
  if (record_in_flight_ || !outbox_.empty()) {
    // Bytes are about to reach the peer anyway; the writer rings after the
    // last queued record if nothing follows it.
    doorbell_pending_ = true;
    return absl::OkStatus();
  }
  return WriteDoorbellLocked();
}

absl::Status SideChannel::QueueRecord(std::string bytes) {
  if (bytes.size() > limits_.max_record_bytes || bytes.size() > UINT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("inline record of ", bytes.size(),
                     " bytes exceeds the limit of ", limits_.max_record_bytes));
  }
  {
    std::lock_guard<std::mutex> lock(write_mu_);
    if (!writer_error_.ok() || stopping_) {
      return absl::UnavailableError("connection closed: inline writer stopped");
    }
    if (!writer_.joinable()) {
      absl::StatusOr<Thread> writer =
          Thread::Start("shm-writer", [this] { WriterLoop(); });
      if (!writer.ok()) return writer.status();  // this record is not sent
      writer_ = *std::move(writer);
    }
    queued_bytes_ += bytes.size();
    queued_bytes_peak_ = std::max(queued_bytes_peak_, queued_bytes_);
    outbox_.push_back(std::move(bytes));
  }
  outbox_ready_.notify_one();
  return absl::OkStatus();
}

absl::Status SideChannel::WaitForRoom(size_t bytes, absl::Time deadline) {
  std::unique_lock<std::mutex> lock(write_mu_);
  const auto can_go_on = [&] {  // room, or no point waiting
    return !writer_error_.ok() || stopping_ || queued_bytes_ == 0 ||
           queued_bytes_ + bytes <= limits_.max_queued_bytes;
  };
  if (!can_go_on()) {
    ++queue_waits_;
    const auto until = SystemWaitDeadline(deadline);
    if (!until.has_value()) {
      outbox_drained_.wait(lock, can_go_on);
    } else if (!outbox_drained_.wait_until(lock, *until, can_go_on)) {
      return absl::DeadlineExceededError(absl::StrCat(
          "the peer read too little of the ", queued_bytes_,
          " bytes of inline records queued for it before the deadline"));
    }
  }
  if (!writer_error_.ok() || stopping_) return ClosedErrorLocked();
  return absl::OkStatus();
}

uint64_t SideChannel::queue_waits() {
  std::lock_guard<std::mutex> lock(write_mu_);
  return queue_waits_;
}

uint64_t SideChannel::queued_bytes_peak() {
  std::lock_guard<std::mutex> lock(write_mu_);
  return queued_bytes_peak_;
}

void SideChannel::WriterLoop() {
  std::unique_lock<std::mutex> lock(write_mu_);
  for (;;) {
    outbox_ready_.wait(lock, [&] { return stopping_ || !outbox_.empty(); });
    if (stopping_) return;
    std::string record = std::move(outbox_.front());
    outbox_.pop_front();
    record_in_flight_ = true;
    lock.unlock();
    const absl::Status written = WriteRecord(record);
    lock.lock();
    record_in_flight_ = false;
    queued_bytes_ -= record.size();
    outbox_drained_.notify_all();
    if (!written.ok()) {
      // Half a record cannot be taken back: end the connection so both
      // sides see it, and refuse further records.
      writer_error_ = written;
      outbox_.clear();
      queued_bytes_ = 0;
      ::shutdown(sock_, SHUT_RDWR);
      return;
    }
    if (doorbell_pending_ && outbox_.empty()) {
      doorbell_pending_ = false;
      WriteDoorbellLocked().IgnoreError();  // a gone peer shows elsewhere
    }
  }
}

absl::Status SideChannel::WriteRecord(const std::string& bytes) {
  uint8_t header[5] = {kRecordToken};
  const uint32_t len32 = static_cast<uint32_t>(bytes.size());
  for (int i = 0; i < 4; ++i) header[1 + i] = (len32 >> (8 * i)) & 0xff;
  iovec iov[2] = {{header, sizeof(header)},
                  {const_cast<char*>(bytes.data()), bytes.size()}};
  int iov_first = 0;
  // Monotonic: a step of the wall clock is no stall.
  auto last_progress = std::chrono::steady_clock::now();
  while (iov_first < 2) {
    msghdr msg{};
    msg.msg_iov = iov + iov_first;
    msg.msg_iovlen = 2 - iov_first;
    const ssize_t n = sendmsg(sock_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        return SocketError("inline record send", errno);
      }
      {
        std::lock_guard<std::mutex> lock(write_mu_);
        if (stopping_) return absl::CancelledError("side channel stopping");
      }
      if (std::chrono::steady_clock::now() - last_progress >
          absl::ToChronoNanoseconds(limits_.stall_timeout)) {
        return absl::DeadlineExceededError(
            absl::StrCat("peer read nothing of an inline record for ",
                         absl::FormatDuration(limits_.stall_timeout)));
      }
      // Short polls so a stopping endpoint is noticed.
      pollfd pfd{sock_, POLLOUT, 0};
      const int ready = poll(&pfd, 1, 100);
      if (ready > 0 && (pfd.revents & (POLLHUP | POLLERR)) != 0) {
        return absl::UnavailableError("peer closed during an inline record");
      }
      continue;
    }
    last_progress = std::chrono::steady_clock::now();
    size_t sent = static_cast<size_t>(n);
    while (iov_first < 2 && sent >= iov[iov_first].iov_len) {
      sent -= iov[iov_first].iov_len;
      ++iov_first;
    }
    if (iov_first < 2) {
      iov[iov_first].iov_base =
          static_cast<char*>(iov[iov_first].iov_base) + sent;
      iov[iov_first].iov_len -= sent;
    }
  }
  return absl::OkStatus();
}

absl::Status SideChannel::Parse(const uint8_t* data, size_t len) {
  size_t i = 0;
  while (i < len) {
    switch (state_) {
      case ParseState::kToken:
        if (data[i] == kDoorbellToken) {
          ++i;
          break;
        }
        if (data[i] != kRecordToken) {
          return absl::DataLossError(absl::StrCat(
              "garbage byte 0x", absl::Hex(data[i]), " on the side channel"));
        }
        ++i;
        state_ = ParseState::kLength;
        length_have_ = 0;
        break;
      case ParseState::kLength: {
        length_bytes_[length_have_++] = data[i++];
        if (length_have_ < 4) break;
        uint32_t record_len = 0;
        for (int b = 0; b < 4; ++b) {
          record_len |= uint32_t{length_bytes_[b]} << (8 * b);
        }
        if (record_len > limits_.max_record_bytes) {
          return absl::DataLossError(absl::StrCat(
              "inline record of ", record_len, " bytes exceeds the limit of ",
              limits_.max_record_bytes));
        }
        partial_ = std::make_shared<std::string>(record_len, '\0');
        body_have_ = 0;
        state_ = ParseState::kBody;
        break;
      }
      case ParseState::kBody: {
        const size_t take = std::min(len - i, partial_->size() - body_have_);
        if (take > 0) {
          std::memcpy(partial_->data() + body_have_, data + i, take);
        }
        body_have_ += take;
        i += take;
        break;
      }
    }
    if (state_ == ParseState::kBody && body_have_ == partial_->size()) {
      buffered_bytes_ += partial_->size();
      if (buffered_bytes_ > 2 * limits_.max_record_bytes + kReadChunkBytes) {
        return absl::DataLossError(
            "peer sent inline records no descriptor asked for");
      }
      records_.push_back(std::move(partial_));
      state_ = ParseState::kToken;
    }
  }
  return absl::OkStatus();
}

absl::Status SideChannel::ReadAvailable() {
  if (!read_error_.ok()) return read_error_;
  uint8_t chunk[kReadChunkBytes];
  for (;;) {
    const ssize_t n = recv(sock_, chunk, sizeof(chunk), MSG_DONTWAIT);
    if (n > 0) {
      read_error_ = Parse(chunk, static_cast<size_t>(n));
    } else if (n == 0) {
      read_error_ = ClosedError();
    } else if (errno == EINTR) {
      continue;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
      read_error_ = SocketError("side channel recv", errno);
    }
    return read_error_;
  }
}

absl::Status SideChannel::Wait(absl::Duration timeout) {
  pollfd pfd{sock_, POLLIN, 0};
  timespec ts = absl::ToTimespec(std::max(timeout, absl::ZeroDuration()));
  const int ready = ppoll(
      &pfd, 1, timeout == absl::InfiniteDuration() ? nullptr : &ts, nullptr);
  if (ready <= 0) return absl::OkStatus();  // timeout or EINTR
  return ReadAvailable();
}

absl::StatusOr<std::shared_ptr<const std::string>> SideChannel::TakeRecord(
    size_t expected_bytes) {
  while (records_.empty()) {
    if (!read_error_.ok()) return read_error_;
    pollfd pfd{sock_, POLLIN, 0};
    if (poll(&pfd, 1, -1) < 0 && errno != EINTR) {
      return SocketError("side channel poll", errno);
    }
    if (absl::Status read = ReadAvailable(); !read.ok()) return read;
  }
  std::shared_ptr<const std::string> record = std::move(records_.front());
  records_.pop_front();
  buffered_bytes_ -= record->size();
  if (record->size() != expected_bytes) {
    return absl::DataLossError(absl::StrCat("inline record of ", record->size(),
                                            " bytes where the descriptor said ",
                                            expected_bytes));
  }
  return record;
}

absl::Status SideChannel::CheckPeer() {
  pollfd pfd{sock_, POLLIN, 0};
  if (poll(&pfd, 1, 0) <= 0) return absl::OkStatus();
  if ((pfd.revents & (POLLHUP | POLLERR)) != 0) return ClosedError();
  return absl::OkStatus();
}

absl::Status SideChannel::ClosedError() {
  std::lock_guard<std::mutex> lock(write_mu_);
  return ClosedErrorLocked();
}

absl::Status SideChannel::ClosedErrorLocked() {
  if (!writer_error_.ok()) {
    return absl::Status(
        writer_error_.code(),
        absl::StrCat("connection closed: ", writer_error_.message()));
  }
  return absl::UnavailableError("peer closed the connection");
}

}  // namespace shmgrpc::shm
