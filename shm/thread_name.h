// Names a thread, so that `top -H`, `ps -L`, `perf` and gdb show which of a
// process's threads are shmgrpc's and what each does.
//
// Contract: `name` is at most 15 characters (the kernel's limit; longer
// names are cut, not refused). Best effort: a failure changes nothing else.
// shm::Thread names the threads it starts (thread.h), from the starting
// thread, so a name is there as soon as the thread is.

#ifndef SHMGRPC_SHM_THREAD_NAME_H_
#define SHMGRPC_SHM_THREAD_NAME_H_

#include <pthread.h>

namespace shmgrpc::shm {

// `thread` must not have been joined or detached yet; naming one that has
// ended but not been joined does nothing.
void NameThread(pthread_t thread, const char* name);

}  // namespace shmgrpc::shm

#endif  // SHMGRPC_SHM_THREAD_NAME_H_
