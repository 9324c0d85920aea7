// shmgrpc: gRPC C++ over shared memory. The one header an application needs.
//
//   // server: unchanged services; one more line after BuildAndStart()
//   auto shm = shmgrpc::ShmServer::Start(server.get(), "unix:/run/app.sock");
//   // client: unchanged stubs; one line swapped
//   auto channel = shmgrpc::CreateChannel("unix:/run/app.sock");
//
// Options (transport/options.h) and their defaults are in README.md.
#ifndef SHMGRPC_SHMGRPC_H_
#define SHMGRPC_SHMGRPC_H_

#include "transport/arena_replies.h"  // IWYU pragma: export
#include "transport/options.h"        // IWYU pragma: export
#include "transport/shm_channel.h"    // IWYU pragma: export
#include "transport/shm_server.h"     // IWYU pragma: export

#endif  // SHMGRPC_SHMGRPC_H_
