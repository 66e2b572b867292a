// Protobuf messages over the Communicator's point-to-point ops: an i64 header holding the
// payload's byte count, then the serialized bytes as a u8 tensor (both on one tag, so MPI's
// non-overtaking order keeps them paired). Byte counts returned are header + payload.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <google/protobuf/message_lite.h>

#include "core/tensor.h"
#include "federated/federated.pb.h"
#include "parallel/communicator.h"

namespace lathe::federated {

constexpr int kTagDown = 41;  // server -> client rank
constexpr int kTagUp = 42;    // client rank -> server

// Blocking send (bounded by comm.timeout()); returns the bytes sent.
int64_t send_message(parallel::Communicator& comm, int dst, int tag, const google::protobuf::MessageLite& msg);

// A send in flight: its Works (the header's and the payload's) complete once the peer
// receives; the buffers live until then.
struct PendingSend {
  std::vector<parallel::WorkPtr> works;
  int64_t bytes = 0;
  int dst = 0;
  bool done();  // tests every Work
};
PendingSend send_message_async(parallel::Communicator& comm, int dst, int tag, const google::protobuf::MessageLite& msg);

// Blocking receive of one message (bounded by comm.timeout()); returns its bytes; parse errors
// name the peer.
int64_t recv_message(parallel::Communicator& comm, int src, int tag, google::protobuf::MessageLite* msg);

// A posted receive of the next message from `src`: ready() polls the header without
// blocking; take() then receives the payload (blocking, bounded by the timeout) and parses.
class PendingRecv {
 public:
  PendingRecv(parallel::Communicator& comm, int src, int tag);
  bool ready();
  int64_t take(google::protobuf::MessageLite* msg);
  int src() const { return src_; }
  // Cancels the posted header receive (at shutdown, for a peer that never sent).
  void abandon();

 private:
  parallel::Communicator& comm_;
  int src_, tag_;
  Tensor header_;
  parallel::WorkPtr work_;
};

// Tensors <-> blobs (f32 row-major bytes).
void to_blob(const std::string& name, const Tensor& t, TensorBlob* b);
Tensor from_blob(const TensorBlob& b);  // f32 CPU tensor; throws on a size mismatch
int64_t payload_bytes(const TensorBlob& b);

}  // namespace lathe::federated
