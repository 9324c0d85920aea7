// The peer cannot write or shrink the owner's memory, and unsealed or
// mis-sized fds are refused. The "peer" is a real forked process that gets
// the fd over a real unix socket with SCM_RIGHTS.
#include "shm/arena.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "gtest/gtest.h"
#include "shm/uds.h"
#include "tests/peer_process.h"

namespace shmgrpc::shm {
namespace {

using ::shmgrpc::testing::ForkPeer;
using ::shmgrpc::testing::WaitPeer;

constexpr size_t kArenaBytes = 1 << 20;

// Exit codes from the child name the check that failed.
enum PeerCheck {
  kAllPassed = 0,
  kRecvFailed = 10,
  kWriteMapAllowed,
  kWriteMapWrongErrno,
  kTruncateAllowed,
  kGrowAllowed,
  kReadMapFailed,
  kOwnerDataNotVisible,
  kMprotectAllowed,
  kMapPeerFailed,
  kWriteSyscallAllowed,
};

TEST(ArenaTest, PeerCanReadButNeverWriteOrResize) {
  auto arena = Arena::Create("arena_test", kArenaBytes);
  ASSERT_TRUE(arena.ok()) << arena.status();
  std::memcpy((*arena)->mutable_base(), "owner", 6);

  auto peer = ForkPeer([](int sock) {
    char byte;
    int fd = -1;
    if (!RecvWithFd(sock, &byte, 1, &fd, absl::Seconds(10)).ok() || fd < 0) {
      return int{kRecvFailed};
    }
    void* w = mmap(nullptr, kArenaBytes, PROT_READ | PROT_WRITE, MAP_SHARED,
                   fd, 0);
    if (w != MAP_FAILED) return int{kWriteMapAllowed};
    if (errno != EPERM) return int{kWriteMapWrongErrno};
    if (ftruncate(fd, 4096) == 0) return int{kTruncateAllowed};
    if (ftruncate(fd, kArenaBytes * 2) == 0) return int{kGrowAllowed};
    if (pwrite(fd, "x", 1, 0) >= 0) return int{kWriteSyscallAllowed};
    void* r = mmap(nullptr, kArenaBytes, PROT_READ, MAP_SHARED, fd, 0);
    if (r == MAP_FAILED) return int{kReadMapFailed};
    if (std::memcmp(r, "owner", 6) != 0) return int{kOwnerDataNotVisible};
    if (mprotect(r, kArenaBytes, PROT_READ | PROT_WRITE) == 0) {
      return int{kMprotectAllowed};
    }
    munmap(r, kArenaBytes);
    if (!Arena::MapPeer(fd, kArenaBytes).ok()) return int{kMapPeerFailed};
    return int{kAllPassed};
  });
  ASSERT_TRUE(peer.ok()) << peer.status();
  ASSERT_TRUE(SendWithFd(peer->sock, "x", 1, (*arena)->fd()).ok());
  EXPECT_EQ(WaitPeer(peer->pid), kAllPassed);
  close(peer->sock);
  // The owner's own mapping stays writable after sealing.
  (*arena)->mutable_base()[kArenaBytes - 1] = 7;
  EXPECT_EQ((*arena)->base()[kArenaBytes - 1], 7);
}

TEST(ArenaTest, SealsAreAllPresent) {
  auto arena = Arena::Create("arena_test", 4096);
  ASSERT_TRUE(arena.ok()) << arena.status();
  EXPECT_EQ(fcntl((*arena)->fd(), F_GET_SEALS) & RequiredSeals(),
            RequiredSeals());
  EXPECT_NE(fcntl((*arena)->fd(), F_GETFD) & FD_CLOEXEC, 0);
}

TEST(ArenaTest, UnsealedMemfdIsRefused) {
  const int fd = memfd_create("unsealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 4096), 0);
  auto mapped = Arena::MapPeer(fd, 4096);
  ASSERT_FALSE(mapped.ok());
  EXPECT_EQ(mapped.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(mapped.status().message().find("seals"), std::string::npos);
}

TEST(ArenaTest, PartiallySealedMemfdIsRefused) {
  const int fd = memfd_create("partial", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 4096), 0);
  ASSERT_EQ(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
  auto mapped = Arena::MapPeer(fd, 4096);
  ASSERT_FALSE(mapped.ok());
  EXPECT_EQ(mapped.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(ArenaTest, NonMemfdIsRefused) {
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  close(pipe_fds[1]);
  auto mapped = Arena::MapPeer(pipe_fds[0], 4096);
  ASSERT_FALSE(mapped.ok());
  EXPECT_EQ(mapped.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(ArenaTest, WrongSizeIsRefused) {
  auto arena = Arena::Create("arena_test", 8192);
  ASSERT_TRUE(arena.ok()) << arena.status();
  auto mapped = Arena::MapPeer(dup((*arena)->fd()), 4096);
  ASSERT_FALSE(mapped.ok());
  EXPECT_EQ(mapped.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(mapped.status().message().find("expected 4096"),
            std::string::npos);
}

// A size the process may not have is refused at set-up with a status, in a
// child whose file-size limit is 1 MiB (tmpfs enforces RLIMIT_FSIZE), instead
// of mapping memory that would SIGBUS on first touch.
TEST(ArenaTest, SizeBeyondLimitsIsAnErrorAtSetUp) {
  auto peer = ForkPeer([](int) {
    signal(SIGXFSZ, SIG_IGN);
    const rlimit limit{1 << 20, 1 << 20};
    if (setrlimit(RLIMIT_FSIZE, &limit) != 0) return 1;
    auto arena = Arena::Create("too_big", 16 << 20);
    if (arena.ok()) return 2;
    if (arena.status().code() != absl::StatusCode::kResourceExhausted) return 3;
    auto fits = Arena::Create("fits", 512 << 10);
    if (!fits.ok()) return 4;
    (*fits)->mutable_base()[(512 << 10) - 1] = 1;  // every page is backed
    return 0;
  });
  ASSERT_TRUE(peer.ok()) << peer.status();
  close(peer->sock);
  EXPECT_EQ(WaitPeer(peer->pid), 0);
}

TEST(ArenaTest, ZeroSizeIsAnError) {
  auto arena = Arena::Create("arena_test", 0);
  ASSERT_FALSE(arena.ok());
  EXPECT_EQ(arena.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace shmgrpc::shm
