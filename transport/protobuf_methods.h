// ProtobufMethods: which gRPC methods carry protobuf messages, judged from
// the method name as gRPC hands it to interceptors.
//
// Generated stubs and services name their methods with string literals of
// the generated code (static storage inside a loaded image); a GenericStub,
// or a generic service's call, passes a std::string's c_str() (heap or
// stack). The descriptor pool alone cannot tell them apart when the process
// links the .proto, and treating a generic call's ByteBuffer as a protobuf
// message would be undefined behaviour. So a method is protobuf when its name
// lives in a loaded image and either the generated descriptor pool knows it
// or it is listed (services compiled with optimize_for = LITE_RUNTIME).
//
// Thread-safe. Answers are cached by the name's address (stable for the life
// of the process), so a call costs one hash lookup; heap and stack names are
// never cached, as their address may be reused by another name.
#ifndef SHMGRPC_TRANSPORT_PROTOBUF_METHODS_H_
#define SHMGRPC_TRANSPORT_PROTOBUF_METHODS_H_

#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace shmgrpc::transport {

class ProtobufMethods {
 public:
  // `listed`: "/package.Service/Method" names to accept although the
  // descriptor pool does not know them.
  explicit ProtobufMethods(std::vector<std::string> listed)
      : listed_(std::move(listed)) {}

  // `method` as ClientRpcInfo::method() or ServerRpcInfo::method() gives it
  // (the pointer matters, see above).
  bool Contains(const char* method);

 private:
  const std::vector<std::string> listed_;
  std::mutex mu_;
  std::unordered_map<const char*, bool> known_;  // by the name's address
};

// True when `method` (as ClientRpcInfo::method() gives it) was named at run
// time, i.e. lives outside every loaded image: a GenericStub's call.
bool NamedAtRunTime(const char* method);

}  // namespace shmgrpc::transport

#endif  // SHMGRPC_TRANSPORT_PROTOBUF_METHODS_H_
