// Names the calling thread, so that `top -H`, `ps -L`, `perf` and gdb show
// which of a process's threads are shmgrpc's and what each does.
//
// Contract: `name` is at most 15 characters (the kernel's limit; longer
// names are cut, not refused). Best effort: a failure changes nothing else.

#ifndef SHMGRPC_SHM_THREAD_NAME_H_
#define SHMGRPC_SHM_THREAD_NAME_H_

namespace shmgrpc::shm {

void NameThisThread(const char* name);

}  // namespace shmgrpc::shm

#endif  // SHMGRPC_SHM_THREAD_NAME_H_
