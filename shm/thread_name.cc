#include "shm/thread_name.h"

#include <pthread.h>

#include <cstring>

namespace shmgrpc::shm {

void NameThread(pthread_t thread, const char* name) {
  char truncated[16];
  std::strncpy(truncated, name, sizeof(truncated) - 1);
  truncated[sizeof(truncated) - 1] = '\0';
  pthread_setname_np(thread, truncated);
}

}  // namespace shmgrpc::shm
