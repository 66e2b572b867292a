// Tensor parallelism composed with the LoRA family; see tp_lora.h.
#include "parallel/tp_lora.h"

#include <typeinfo>

#include "autograd/function.h"
#include "autograd/ops.h"
#include "kernels/ops.h"
#include "peft/lora_sb.h"
#include "peft/nola.h"
#include "peft/sora.h"

namespace lathe::parallel {

namespace ag = lathe::autograd;

namespace {

// A column-parallel layer: f (or the Megatron-SP gather) on the input of base and adapter.
class ColumnRegion final : public peft::TensorParallelRegion {
 public:
  ColumnRegion(CommPtr comm, bool sp) : comm_(std::move(comm)), sp_(sp) {}
  Tensor enter(const Tensor& x) const override { return sp_ ? gather_seq(x, comm_) : copy_to_tp(x, comm_); }
  Tensor leave(const Tensor& y) const override { return y; }
  Tensor dropout(const Tensor& x, double p, Generator& gen, bool training) const override {
    return ag::dropout(x, p, gen, training);  // x is replicated: the one-process mask
  }

 private:
  CommPtr comm_;
  bool sp_;
};

// A row-parallel layer: g (or the Megatron-SP reduce-scatter; nothing with the Ladder
// residual, whose reducer sums later) on the sum of base and adapter partials.
class RowRegion final : public peft::TensorParallelRegion {
 public:
  RowRegion(CommPtr comm, bool sp, bool reduce) : comm_(std::move(comm)), sp_(sp), reduce_(reduce) {}
  Tensor enter(const Tensor& x) const override { return x; }
  Tensor leave(const Tensor& y) const override {
    if (!reduce_) return y;
    return sp_ ? reduce_scatter_seq(y, comm_) : reduce_from_tp(y, comm_);
  }
  Tensor dropout(const Tensor& x, double p, Generator& gen, bool training) const override {
    if (!training || p == 0.0) return x;
    // The one-process mask of the whole input [..., in], drawn on every rank (the stream
    // advances as in one process); this rank holds columns [rank * n, (rank + 1) * n).
    const int64_t n = x.size(-1);
    Shape full = x.shape();
    full.back() = n * comm_->size();
    kernels::DropoutOut o = kernels::dropout(Tensor::zeros(full, x.dtype(), x.device()), p, gen);
    Tensor mask = o.mask.narrow(x.dim() - 1, comm_->rank() * n, n).contiguous().to(x.dtype());
    const double keep = 1.0 / (1.0 - p);
    return ag::mul(x, kernels::affine(mask, keep, 0.0));
  }

 private:
  CommPtr comm_;
  bool sp_, reduce_;
};

}  // namespace

void shard_lora_layer(models::CausalLM& model, const std::string& path, bool column, const CommPtr& comm,
                      bool sp, bool reduce_rows, TensorParallelShards& out) {
  auto lora = std::dynamic_pointer_cast<peft::LoraLinear>(model.module(path));
  LATHE_REQUIRE(lora) << "tensor parallelism: " << path << " is not a LoRA adapter";
  const std::string method = lora->method_name();
  // LoRA, and LoRA-SB / LoRA-XS (LoRA's forward with R in the middle; the gradient init of
  // LoRA-SB runs after sharding: train/peft_setup.h), SoRA and NOLA (their own forward, with
  // the region around it). SpIEL is not a LoraLinear. SoRA's gate sits on the r-wide
  // intermediate, which is whole on every rank (column: A x; row: the partial A_i x_i, gated
  // before the sum, which is linear in it).
  const bool plain = typeid(*lora) == typeid(peft::LoraLinear);
  const bool sb = typeid(*lora) == typeid(peft::LoraSbLinear);
  const bool sora = typeid(*lora) == typeid(peft::SoraLinear);
  auto* nola = dynamic_cast<peft::NolaLinear*>(lora.get());
  LATHE_REQUIRE(plain || sb || sora || nola) << "tensor parallelism: " << path << " carries a " << method
                                           << " adapter, which is not supported with tensor parallelism";
  LATHE_REQUIRE(path != "lm_head") << "tensor parallelism: an adapter on lm_head is not supported (its vocabulary "
                                    "rows are padded and sharded); exclude lm_head from peft.target_modules";
  LATHE_REQUIRE(!lora->merged()) << "tensor parallelism: the adapter at " << path << " is merged";
  auto full = std::dynamic_pointer_cast<models::Linear>(lora->base());
  LATHE_REQUIRE(full) << "tensor parallelism: the adapter at " << path << " wraps a " << lora->base()->type_name()
                    << ", expected a plain Linear";
  const models::ModelSpec& s = model.spec();
  const int t = comm->size(), r = comm->rank();
  auto slice = [&](const std::string& name, const Tensor& full_t) {
    if (shard_dim(name, s) >= 0) out.sharded.insert(name);
    return slice_shard(name, full_t, s, t, r, 1);
  };
  const Tensor w = slice(path + ".weight", full->weight());
  std::shared_ptr<models::LinearLayer> base;
  if (column) {
    // The local product only: the region applies f once for the base and the adapter.
    auto lin = std::make_shared<models::Linear>(w.size(1), w.size(0), full->bias().defined());
    lin->weight().copy_(w);
    if (full->bias().defined()) lin->bias().copy_(slice(path + ".bias", full->bias()));
    base = lin;
  } else {
    // The bias joins the partial sum once (rank 0), like the Ladder residual's.
    base = std::make_shared<RowParallelLinear>(w, full->bias(), comm, /*reduce=*/false);
    if (full->bias().defined() && lora->parameter("bias").requires_grad()) out.partial_grad.push_back(path + ".bias");
  }
  lora->set_tensor_parallel(base, column ? std::shared_ptr<const peft::TensorParallelRegion>(
                                               std::make_shared<ColumnRegion>(comm, sp))
                                         : std::make_shared<RowRegion>(comm, sp, reduce_rows));
  // NOLA: the bases of the whole matrices, this rank's slice of their combinations.
  if (nola) {
    const int64_t out = full->weight().size(0), in = full->weight().size(1);
    nola->set_shard(out, column ? r * (out / t) : 0, in, column ? 0 : r * (in / t));
  }
  // The adapter's own tensors (factors, SoRA's gate): the sharded one sliced, the replicated
  // ones' gradients are partial sums.
  for (const auto& [local, p] : lora->named_parameters()) {
    if (local == "weight" || local == "bias") continue;  // the base's, done above
    const std::string name = path + "." + local;
    if (shard_dim(name, s) >= 0)
      model.replace_parameter(name, slice(name, p));
    else if (p.requires_grad())
      out.partial_grad.push_back(name);
  }
}

}  // namespace lathe::parallel
