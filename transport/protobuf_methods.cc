#include "transport/protobuf_methods.h"

#include <dlfcn.h>

#include <algorithm>

#include "google/protobuf/descriptor.h"

namespace shmgrpc::transport {
namespace {

bool InLoadedImage(const char* name) {
  Dl_info info;
  return dladdr(name, &info) != 0 && info.dli_fname != nullptr;
}

}  // namespace

bool NamedAtRunTime(const char* method) { return !InLoadedImage(method); }

bool ProtobufMethods::Contains(const char* method) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = known_.find(method);
    if (it != known_.end()) return it->second;
  }
  if (!InLoadedImage(method)) return false;
  bool known =
      std::find(listed_.begin(), listed_.end(), method) != listed_.end();
  // "/package.Service/Method" -> "package.Service.Method"
  std::string name = method[0] == '/' ? method + 1 : method;
  const size_t slash = name.rfind('/');
  if (!known && slash != std::string::npos) {
    name[slash] = '.';
    known =
        google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(
            name) != nullptr;
  }
  std::lock_guard<std::mutex> lock(mu_);
  known_.emplace(method, known);
  return known;
}

}  // namespace shmgrpc::transport
