#include "federated/wire.h"

#include <cstring>

#include "core/error.h"

namespace lathe::federated {

namespace {
Tensor serialize(const google::protobuf::MessageLite& msg) {
  const std::string s = msg.SerializeAsString();
  Tensor t = Tensor::empty({static_cast<int64_t>(s.size())}, DType::u8);
  if (!s.empty()) std::memcpy(t.raw_data(), s.data(), s.size());
  return t;
}

void parse(const Tensor& payload, int src, google::protobuf::MessageLite* msg) {
  if (!msg->ParseFromArray(payload.numel() ? payload.raw_data() : nullptr, static_cast<int>(payload.numel())))
    LATHE_FAIL() << "federated: a malformed " << msg->GetTypeName() << " (" << payload.numel() << " bytes) from rank "
                 << src;
}
}  // namespace

int64_t send_message(parallel::Communicator& comm, int dst, int tag, const google::protobuf::MessageLite& msg) {
  PendingSend s = send_message_async(comm, dst, tag, msg);
  for (auto& w : s.works) w->wait();
  return s.bytes;
}

PendingSend send_message_async(parallel::Communicator& comm, int dst, int tag, const google::protobuf::MessageLite& msg) {
  Tensor payload = serialize(msg);
  Tensor header = Tensor::from_vector<int64_t>({payload.numel()}, {1});
  PendingSend s;
  s.dst = dst;
  s.works.push_back(comm.send_async(header, dst, tag));
  if (payload.numel() > 0) s.works.push_back(comm.send_async(payload, dst, tag));
  s.bytes = 8 + payload.numel();
  return s;
}

bool PendingSend::done() {
  bool all = true;
  for (auto& w : works) all = w->test() && all;
  return all;
}

int64_t recv_message(parallel::Communicator& comm, int src, int tag, google::protobuf::MessageLite* msg) {
  PendingRecv r(comm, src, tag);
  return r.take(msg);
}

PendingRecv::PendingRecv(parallel::Communicator& comm, int src, int tag) : comm_(comm), src_(src), tag_(tag) {
  header_ = Tensor::zeros({1}, DType::i64);
  work_ = comm_.recv_async(header_, src_, tag_);
}

bool PendingRecv::ready() { return work_ && work_->test(); }

int64_t PendingRecv::take(google::protobuf::MessageLite* msg) {
  work_->wait();
  work_.reset();
  const int64_t n = header_.data<int64_t>()[0];
  LATHE_CHECK(n >= 0 && n < (int64_t{1} << 40)) << "federated: a bad message header (" << n << " bytes) from rank " << src_;
  Tensor payload = Tensor::empty({n}, DType::u8);
  if (n > 0) comm_.recv(payload, src_, tag_);
  parse(payload, src_, msg);
  return 8 + n;
}

void PendingRecv::abandon() {
  if (!work_) return;
  if (work_->test()) {
    work_.reset();
    return;
  }
  // The communicator's timeout machinery cancels a receive whose wait expires (throw mode).
  const double t = comm_.timeout();
  const auto action = comm_.timeout_action();
  comm_.set_timeout_action(parallel::TimeoutAction::throw_error);
  comm_.set_timeout(1e-3);
  try {
    work_->wait();
  } catch (const std::exception&) {
  }
  comm_.set_timeout(t);
  comm_.set_timeout_action(action);
  work_.reset();
}

void to_blob(const std::string& name, const Tensor& t, TensorBlob* b) {
  b->set_name(name);
  Tensor c = t.detach().to(Device::cpu()).to(DType::f32).contiguous();
  for (int64_t d : c.shape()) b->add_shape(d);
  b->set_data(std::string(static_cast<const char*>(c.raw_data()), static_cast<size_t>(c.numel()) * 4));
}

Tensor from_blob(const TensorBlob& b) {
  Shape shape(b.shape().begin(), b.shape().end());
  Tensor t = Tensor::empty(shape, DType::f32);
  LATHE_CHECK(static_cast<int64_t>(b.data().size()) == t.numel() * 4)
      << "federated: tensor " << b.name() << " carries " << b.data().size() << " bytes for shape " << t.shape_str();
  if (t.numel() > 0) std::memcpy(t.raw_data(), b.data().data(), b.data().size());
  return t;
}

int64_t payload_bytes(const TensorBlob& b) { return static_cast<int64_t>(b.data().size()); }

}  // namespace lathe::federated
