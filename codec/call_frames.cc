#include "codec/call_frames.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace shmgrpc::codec {
namespace {

class Writer {
 public:
  void U32(uint32_t v) { Raw(&v, sizeof(v)); }
  void I32(int32_t v) { Raw(&v, sizeof(v)); }
  void I64(int64_t v) { Raw(&v, sizeof(v)); }
  void Bytes(absl::string_view s) {
    U32(static_cast<uint32_t>(s.size()));
    out_.append(s.data(), s.size());
  }
  void Pairs(const Metadata& metadata) {
    U32(static_cast<uint32_t>(metadata.size()));
    for (const auto& [key, value] : metadata) {
      Bytes(key);
      Bytes(value);
    }
  }
  std::string Take() { return std::move(out_); }

 private:
  void Raw(const void* p, size_t n) {
    out_.append(static_cast<const char*>(p), n);
  }
  std::string out_;
};

class Reader {
 public:
  Reader(absl::string_view in, const FrameLimits& limits)
      : in_(in), limits_(limits) {}

  bool U32(uint32_t* v) { return Raw(v, sizeof(*v)); }
  bool I32(int32_t* v) { return Raw(v, sizeof(*v)); }
  bool I64(int64_t* v) { return Raw(v, sizeof(*v)); }
  bool Bytes(std::string* s, size_t max_bytes) {
    uint32_t n;
    if (!U32(&n) || n > in_.size() || n > max_bytes) return false;
    s->assign(in_.data(), n);
    in_.remove_prefix(n);
    return true;
  }
  bool Pairs(Metadata* metadata) {
    uint32_t count;
    if (!U32(&count) || count > limits_.max_metadata_entries) return false;
    size_t total = 0;
    metadata->reserve(count);
    for (uint32_t i = 0; i < count; ++i) {
      std::string key, value;
      if (!Bytes(&key, limits_.max_metadata_bytes) ||
          !Bytes(&value, limits_.max_metadata_bytes)) {
        return false;
      }
      total += key.size() + value.size();
      if (total > limits_.max_metadata_bytes) return false;
      metadata->emplace_back(std::move(key), std::move(value));
    }
    return true;
  }
  size_t max_string() const { return limits_.max_string_bytes; }
  bool AtEnd() const { return in_.empty(); }

 private:
  bool Raw(void* p, size_t n) {
    if (in_.size() < n) return false;
    std::memcpy(p, in_.data(), n);
    in_.remove_prefix(n);
    return true;
  }
  absl::string_view in_;
  const FrameLimits& limits_;
};

absl::Status Malformed(absl::string_view what, size_t size) {
  return absl::InvalidArgumentError(
      absl::StrCat("malformed ", what, " frame (", size, " bytes)"));
}

}  // namespace

std::string EncodeCallHeaders(const CallHeaders& headers) {
  Writer w;
  w.Bytes(headers.method);
  w.Bytes(headers.authority);
  w.I64(headers.deadline_unix_nanos);
  w.Pairs(headers.metadata);
  return w.Take();
}

absl::StatusOr<CallHeaders> DecodeCallHeaders(absl::string_view bytes,
                                              const FrameLimits& limits) {
  Reader r(bytes, limits);
  CallHeaders headers;
  if (!r.Bytes(&headers.method, r.max_string()) ||
      !r.Bytes(&headers.authority, r.max_string()) ||
      !r.I64(&headers.deadline_unix_nanos) || !r.Pairs(&headers.metadata) ||
      !r.AtEnd()) {
    return Malformed("call headers", bytes.size());
  }
  if (headers.method.empty() || headers.method[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("call headers name no method: '", headers.method, "'"));
  }
  return headers;
}

std::string EncodeMetadata(const Metadata& metadata) {
  Writer w;
  w.Pairs(metadata);
  return w.Take();
}

absl::StatusOr<Metadata> DecodeMetadata(absl::string_view bytes,
                                        const FrameLimits& limits) {
  Reader r(bytes, limits);
  Metadata metadata;
  if (!r.Pairs(&metadata) || !r.AtEnd()) {
    return Malformed("metadata", bytes.size());
  }
  return metadata;
}

std::string EncodeCallStatus(const CallStatus& status) {
  Writer w;
  w.I32(status.code);
  w.Bytes(status.message);
  w.Bytes(status.details);
  w.Pairs(status.trailing_metadata);
  return w.Take();
}

absl::StatusOr<CallStatus> DecodeCallStatus(absl::string_view bytes,
                                            const FrameLimits& limits) {
  Reader r(bytes, limits);
  CallStatus status;
  if (!r.I32(&status.code) || !r.Bytes(&status.message, r.max_string()) ||
      !r.Bytes(&status.details, limits.max_metadata_bytes) ||
      !r.Pairs(&status.trailing_metadata) || !r.AtEnd()) {
    return Malformed("status", bytes.size());
  }
  if (status.code < 0 || status.code > 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("status frame carries unknown code ", status.code));
  }
  return status;
}

}  // namespace shmgrpc::codec
