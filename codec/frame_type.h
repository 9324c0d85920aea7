// The frames a gRPC call is made of, as they travel in descriptor rings.
//
// A frame is one shm::Descriptor: `type` is a FrameType, `tag` the stream id
// (chosen by the client, unique per session), and the payload (if any) an
// arena block. The payloads' encodings are in call_frames.h; a kMessage
// payload is the serialized protobuf message itself.
#ifndef SHMGRPC_CODEC_FRAME_TYPE_H_
#define SHMGRPC_CODEC_FRAME_TYPE_H_

#include <cstdint>

namespace shmgrpc::codec {

enum class FrameType : uint16_t {
  kCallHeaders = 1,      // client -> server: method, authority, deadline,
                         // md; a stream's `aux` advertises the client's
                         // receive window (transport/flow_window.h)
  kInitialMetadata = 2,  // server -> client
  kMessage = 3,          // both ways: one serialized message
  kHalfClose = 4,        // client -> server: no more requests
  kStatus = 5,           // server -> client: status + trailing metadata
  kCancel = 6,           // client -> server: the client gave up
  kWindowUpdate = 7,     // both ways, streams only: the receiver consumed
                         // messages; no payload, the credit is in `aux`
                         // (see transport/flow_window.h)
  kGoAway = 8,  // server -> client, stream 0: the server is shutting down;
                // it serves the calls it has and those already sent, the
                // client starts no new one on this session and closes it
                // once its calls have ended (a peer that predates this frame
                // skips it as unknown, and the server closes it once idle)
};

// Descriptor flags on a kCallHeaders frame.
inline constexpr uint16_t kUnaryCallFlag = 1;  // one request, then half-close
// Descriptor flag on a kMessage frame: this is one chunk of a message that
// did not fit one block; the next kMessage frame of the stream continues it
// (the last chunk has no flag).
inline constexpr uint16_t kMessageContinuesFlag = 2;
// Descriptor flag on a stream's kMessage frames (every chunk): the sender's
// flow-control window was full once this message left, so it waits for
// credit. The receiver credits all it consumed as soon as its application
// has consumed this message, whatever its own window's credit threshold:
// each side sizes its windows itself (Options::stream_window_*), and a
// receiver crediting at half of a window larger than twice its sender's
// would otherwise never credit (transport/flow_window.h). Peers that
// predate the flag ignore it.
inline constexpr uint16_t kWindowFullFlag = 4;

// True for the values above; anything else from a peer is a protocol error.
inline bool IsKnownFrameType(uint16_t type) {
  return type >= static_cast<uint16_t>(FrameType::kCallHeaders) &&
         type <= static_cast<uint16_t>(FrameType::kGoAway);
}

}  // namespace shmgrpc::codec

#endif  // SHMGRPC_CODEC_FRAME_TYPE_H_
