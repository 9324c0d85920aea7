#include "shm/arena.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "shm/memory_headroom.h"

namespace shmgrpc::shm {
namespace {

absl::Status ErrnoStatus(absl::string_view what, int err) {
  std::string message = absl::StrCat(what, ": ", strerror(err));
  if (err == ENOSPC || err == ENOMEM || err == EFBIG) {
    return absl::ResourceExhaustedError(message);
  }
  if (err == EPERM || err == EACCES) {
    return absl::PermissionDeniedError(message);
  }
  return absl::InternalError(message);
}

size_t RoundUpToPage(size_t n) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (n + page - 1) / page * page;
}

}  // namespace

int RequiredSeals() {
  return F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL;
}

absl::StatusOr<std::unique_ptr<Arena>> Arena::Create(
    const std::string& debug_name, size_t size_bytes) {
  if (size_bytes == 0) {
    return absl::InvalidArgumentError("arena size must be positive");
  }
  const size_t size = RoundUpToPage(size_bytes);
  if (absl::Status room = CheckMemoryHeadroom(size, kArenaMemoryReserve);
      !room.ok()) {
    return room;
  }
  const int fd =
      memfd_create(debug_name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return ErrnoStatus("memfd_create", errno);
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
    const int err = errno;
    close(fd);
    return ErrnoStatus("ftruncate", err);
  }
  // posix_fallocate returns the error number instead of setting errno.
  if (const int err = posix_fallocate(fd, 0, static_cast<off_t>(size));
      err != 0) {
    close(fd);
    return ErrnoStatus(absl::StrCat("posix_fallocate of ", size, " bytes"),
                       err);
  }
  void* base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) {
    const int err = errno;
    close(fd);
    return ErrnoStatus("mmap(PROT_READ|PROT_WRITE)", err);
  }
  if (fcntl(fd, F_ADD_SEALS, RequiredSeals()) != 0) {
    const int err = errno;
    munmap(base, size);
    close(fd);
    return ErrnoStatus("fcntl(F_ADD_SEALS)", err);
  }
  return std::unique_ptr<Arena>(
      new Arena(fd, static_cast<uint8_t*>(base), size, /*writable=*/true));
}

absl::StatusOr<std::unique_ptr<Arena>> Arena::MapPeer(int fd,
                                                      size_t expected_bytes) {
  auto fail = [fd](absl::Status status) {
    close(fd);
    return status;
  };
  if (fd < 0) return absl::InvalidArgumentError("peer arena fd is invalid");
  const int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0) {
    return fail(absl::FailedPreconditionError(absl::StrCat(
        "peer arena fd is not a sealable memfd: ", strerror(errno))));
  }
  if ((seals & RequiredSeals()) != RequiredSeals()) {
    return fail(absl::FailedPreconditionError(absl::StrCat(
        "peer arena fd lacks required seals: has 0x", absl::Hex(seals),
        ", needs 0x", absl::Hex(RequiredSeals()))));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) return fail(ErrnoStatus("fstat", errno));
  if (static_cast<uint64_t>(st.st_size) != expected_bytes) {
    return fail(absl::FailedPreconditionError(absl::StrCat(
        "peer arena is ", st.st_size, " bytes, expected ", expected_bytes)));
  }
  void* base = mmap(nullptr, expected_bytes, PROT_READ, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) return fail(ErrnoStatus("mmap(PROT_READ)", errno));
  return std::unique_ptr<Arena>(new Arena(fd, static_cast<uint8_t*>(base),
                                          expected_bytes, /*writable=*/false));
}

Arena::~Arena() {
  munmap(base_, size_);
  close(fd_);
}

}  // namespace shmgrpc::shm
