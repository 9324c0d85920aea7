// IsNoShmSocket tells the ordinary plain case (nothing listens at the shm
// socket: the server has no shm, or is restarting) from every other
// handshake failure, which the client logs. It goes by a status payload that
// ConnectUnix sets, not by the message's wording.
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <thread>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "tests/server_process.h"
#include "transport/handshake.h"
#include "transport/options.h"

namespace shmgrpc::transport {
namespace {

TEST(NoShmSocketTest, NothingListeningIsTheOrdinaryPlainCase) {
  const std::string path = testing::FreshSocketPath();
  unlink(path.c_str());
  const absl::StatusOr<Handshaken> handshaken =
      ClientHandshake(path, Options());
  ASSERT_FALSE(handshaken.ok());
  EXPECT_TRUE(absl::IsUnavailable(handshaken.status()));
  EXPECT_TRUE(IsNoShmSocket(handshaken.status())) << handshaken.status();
}

TEST(NoShmSocketTest, AServerThatRefusesIsNotThePlainCase) {
  const std::string path = testing::FreshSocketPath();
  absl::StatusOr<int> listener = ListenUnix(path);
  ASSERT_TRUE(listener.ok()) << listener.status();
  std::thread server([fd = *listener] {
    const int sock = accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (sock < 0) return;
    RefuseHandshake(sock, kServerBusy);
    close(sock);
  });
  const absl::StatusOr<Handshaken> handshaken =
      ClientHandshake(path, Options());
  server.join();
  close(*listener);
  unlink(path.c_str());
  ASSERT_FALSE(handshaken.ok());
  EXPECT_EQ(handshaken.status().message(),
            "shm handshake: the server is busy with other handshakes");
  EXPECT_FALSE(IsNoShmSocket(handshaken.status()));
}

TEST(NoShmSocketTest, AMessageThatOnlyLooksLikeItIsNot) {
  EXPECT_FALSE(IsNoShmSocket(
      absl::UnavailableError("connect /tmp/x.shm: No such file or directory")));
  EXPECT_FALSE(IsNoShmSocket(absl::OkStatus()));
}

}  // namespace
}  // namespace shmgrpc::transport
