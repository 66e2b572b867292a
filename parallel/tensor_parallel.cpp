// Megatron tensor parallelism; see tensor_parallel.h.
#include "parallel/tensor_parallel.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "autograd/function.h"
#include "autograd/ops.h"
#include "kernels/ops.h"
#include "models/attention.h"
#include "models/autocast.h"
#include "models/block.h"
#include "parallel/tp_lora.h"
#include "peft/lora.h"

namespace lathe::parallel {

namespace ag = lathe::autograd;
using models::autocast;

namespace {

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// Large enough to lose every softmax comparison, small enough that x - max stays finite.
constexpr double kPadLogit = -1e30;

Tensor scalar_like(double v, DType dt, const Tensor& like) { return Tensor::scalar(v, dt, like.device()); }

}  // namespace

Tensor copy_to_tp(const Tensor& x, const CommPtr& comm) {
  if (comm->size() == 1) return x;
  CommPtr c = comm;
  return ag::record("tp_copy", x, {x}, [c](const std::vector<Tensor>& g, const std::vector<bool>&) {
    Tensor s = g[0].clone();
    c->all_reduce(s);
    return std::vector<Tensor>{s};
  });
}

Tensor reduce_from_tp(const Tensor& x, const CommPtr& comm) {
  if (comm->size() == 1) return x;
  Tensor s = x.detach().clone();
  comm->all_reduce(s);
  return ag::record("tp_reduce", s, {x},
                    [](const std::vector<Tensor>& g, const std::vector<bool>&) { return std::vector<Tensor>{g[0]}; });
}

namespace {
// [B, T, ...] with the sequence cut in `n` slices -> [n, B, T/n, ...] contiguous (slice-major,
// the block order of the chunked collectives), and back.
Tensor slices_first(const Tensor& x, int n) {
  Shape s = x.shape();
  Shape v = {s[0], n, s[1] / n};
  v.insert(v.end(), s.begin() + 2, s.end());
  return x.reshape(v).transpose(0, 1).contiguous();
}
Tensor slices_back(const Tensor& y) {  // [n, B, Tl, ...] -> [B, n * Tl, ...]
  Shape s = y.shape();
  Shape out = {s[1], s[0] * s[2]};
  out.insert(out.end(), s.begin() + 3, s.end());
  return y.transpose(0, 1).contiguous().reshape(out);
}
Tensor all_gather_seq_raw(const Tensor& x, Communicator& c) {
  Shape s = x.shape();
  s.insert(s.begin(), c.size());
  Tensor all = Tensor::empty(s, x.dtype(), x.device());
  c.all_gather(x.contiguous(), all);
  return slices_back(all);
}
Tensor reduce_scatter_seq_raw(const Tensor& x, Communicator& c) {
  LATHE_CHECK(x.size(1) % c.size() == 0) << "sequence parallelism: sequence length " << x.size(1)
                                         << " is not divisible by the " << c.size() << " ranks";
  Tensor in = slices_first(x, c.size());
  Shape s(in.shape().begin() + 1, in.shape().end());
  Tensor out = Tensor::empty(s, x.dtype(), x.device());
  c.reduce_scatter(in, out);
  return out;
}
}  // namespace

Tensor gather_seq(const Tensor& x, const CommPtr& comm) {
  if (comm->size() == 1) return x;
  CommPtr c = comm;
  return ag::record("sp_gather", all_gather_seq_raw(x.detach(), *c), {x},
                    [c](const std::vector<Tensor>& g, const std::vector<bool>&) {
                      return std::vector<Tensor>{reduce_scatter_seq_raw(g[0], *c)};
                    });
}

Tensor reduce_scatter_seq(const Tensor& x, const CommPtr& comm) {
  if (comm->size() == 1) return x;
  CommPtr c = comm;
  return ag::record("sp_reduce_scatter", reduce_scatter_seq_raw(x.detach(), *c), {x},
                    [c](const std::vector<Tensor>& g, const std::vector<bool>&) {
                      return std::vector<Tensor>{all_gather_seq_raw(g[0], *c)};
                    });
}

Tensor SequenceParallelShard::scatter(const Tensor& x, int64_t dim) const {
  const int64_t n = comm_->size();
  if (n == 1) return x;
  LATHE_CHECK(x.size(dim) % n == 0) << "sequence parallelism: dim " << dim << " of " << x.shape_str()
                                    << " is not divisible by the " << n << " ranks";
  const int64_t len = x.size(dim) / n;
  CommPtr c = comm_;
  Tensor mine = x.detach().narrow(dim, comm_->rank() * len, len).contiguous();
  return ag::record("sp_scatter", mine, {x}, [c, dim](const std::vector<Tensor>& g, const std::vector<bool>&) {
    // The slices of every rank's gradient along dim, gathered in rank order.
    Tensor moved = g[0].transpose(0, dim).contiguous();
    Shape s = moved.shape();
    s.insert(s.begin(), c->size());
    Tensor all = Tensor::empty(s, moved.dtype(), moved.device());
    c->all_gather(moved, all);
    Shape merged(s.begin() + 1, s.end());
    merged[0] *= c->size();
    return std::vector<Tensor>{all.reshape(merged).transpose(0, dim).contiguous()};
  });
}

int64_t padded_vocab(int64_t vocab, int tp, int64_t pad_multiple) {
  const int64_t m = std::max<int64_t>(1, pad_multiple) * tp;
  return (vocab + m - 1) / m * m;
}

// ---- layers --------------------------------------------------------------------------------

ColumnParallelLinear::ColumnParallelLinear(const Tensor& weight, const Tensor& bias, CommPtr comm, bool seq_parallel)
    : comm_(std::move(comm)), seq_parallel_(seq_parallel) {
  weight_ = register_param("weight", weight.detach().clone());
  if (bias.defined()) bias_ = register_param("bias", bias.detach().clone());
}

Tensor ColumnParallelLinear::forward(const Tensor& x) const { return forward_act(x, kernels::Activation::none); }

Tensor ColumnParallelLinear::forward_act(const Tensor& x, kernels::Activation act) const {
  const Tensor& w = weight_.get();
  LATHE_CHECK(x.size(-1) == w.size(1)) << "ColumnParallelLinear: input has " << x.size(-1)
                                       << " features, the layer expects " << w.size(1);
  Tensor in = seq_parallel_ ? gather_seq(x, comm_) : copy_to_tp(x, comm_);
  return ag::linear(autocast(in), autocast(w), autocast(bias_.get()), act);
}

RowParallelLinear::RowParallelLinear(const Tensor& weight, const Tensor& bias, CommPtr comm, bool reduce,
                                     bool seq_parallel)
    : comm_(std::move(comm)), reduce_(reduce), seq_parallel_(seq_parallel) {
  weight_ = register_param("weight", weight.detach().clone());
  if (bias.defined()) bias_ = register_param("bias", bias.detach().clone());
}

Tensor RowParallelLinear::forward(const Tensor& x) const {
  const Tensor& w = weight_.get();
  LATHE_CHECK(x.size(-1) == w.size(1)) << "RowParallelLinear: input has " << x.size(-1)
                                       << " features, this rank's shard expects " << w.size(1);
  if (!reduce_) {
    // The sum over ranks happens later (the model's BranchReducer): the bias joins it once.
    const bool bias_here = comm_->rank() == 0;
    return ag::linear(autocast(x), autocast(w), bias_here ? autocast(bias_.get()) : Tensor());
  }
  Tensor partial = ag::linear(autocast(x), autocast(w));
  Tensor y = seq_parallel_ ? reduce_scatter_seq(partial, comm_) : reduce_from_tp(partial, comm_);
  return bias_.defined() ? ag::add(y, autocast(bias_.get())) : y;
}

VocabParallelEmbedding::VocabParallelEmbedding(const Tensor& weight, int64_t start, CommPtr comm, bool seq_parallel)
    : Embedding(weight.size(0), weight.size(1)), start_(start), comm_(std::move(comm)), seq_parallel_(seq_parallel) {
  this->weight().copy_(weight);
}

Tensor VocabParallelEmbedding::forward(const Tensor& ids) const {
  const Tensor w = weight();
  const int64_t rows = w.size(0);
  Tensor id = ids.to(DType::i64);
  Tensor rel = kernels::binary(kernels::BinaryOp::sub, id, scalar_like(static_cast<double>(start_), DType::i64, id));
  Tensor ge = kernels::binary(kernels::BinaryOp::ge, rel, scalar_like(0, DType::i64, id));
  Tensor lt = kernels::binary(kernels::BinaryOp::lt, rel, scalar_like(static_cast<double>(rows), DType::i64, id));
  Tensor zero_f = scalar_like(0, w.dtype(), w);
  Tensor mine = kernels::where(ge, kernels::where(lt, scalar_like(1, w.dtype(), w), zero_f), zero_f);
  Tensor safe = kernels::where(mine, rel, scalar_like(0, DType::i64, id));
  Tensor e = ag::mul(ag::embedding(w, safe), mine.unsqueeze(-1));
  return autocast(seq_parallel_ ? reduce_scatter_seq(e, comm_) : reduce_from_tp(e, comm_));
}

Tensor VocabParallelEmbedding::logits(const Tensor& x) const {
  return ag::linear(autocast(seq_parallel_ ? gather_seq(x, comm_) : copy_to_tp(x, comm_)), autocast(weight()));
}

VocabParallelOutput::VocabParallelOutput(int64_t vocab, int64_t start, int64_t rows, CommPtr comm)
    : vocab_(vocab), start_(start), rows_(rows), comm_(std::move(comm)) {}

Tensor VocabParallelOutput::full_logits(const Tensor& local) const {
  LATHE_CHECK(local.size(-1) == rows_) << "VocabParallelOutput: logits have " << local.size(-1)
                                       << " columns, this rank's vocabulary shard has " << rows_;
  const int t = comm_->size();
  Shape prefix(local.shape().begin(), local.shape().end() - 1);
  int64_t P = 1;
  for (int64_t d : prefix) P *= d;
  Tensor flat = local.detach().reshape({P, rows_}).contiguous();
  Tensor all = Tensor::empty({t, P, rows_}, local.dtype(), local.device());
  comm_->all_gather(flat, all);
  Shape out_shape = prefix;
  out_shape.push_back(vocab_);
  Tensor full = all.transpose(0, 1).reshape({P, t * rows_}).narrow(1, 0, vocab_).contiguous().reshape(out_shape);
  const int64_t lo = start_, n = std::max<int64_t>(0, std::min(vocab_, start_ + rows_) - start_);
  const int64_t rows = rows_;
  return ag::record("tp_gather_vocab", full, {local},
                    [P, rows, lo, n, prefix](const std::vector<Tensor>& g, const std::vector<bool>&) {
                      Tensor gl = Tensor::zeros({P, rows}, g[0].dtype(), g[0].device());
                      if (n > 0) gl.narrow(1, 0, n).copy_(g[0].reshape({P, g[0].size(-1)}).narrow(1, lo, n));
                      Shape s = prefix;
                      s.push_back(rows);
                      return std::vector<Tensor>{gl.reshape(s)};
                    });
}

Tensor VocabParallelOutput::cross_entropy(const Tensor& local, const Tensor& targets, int64_t ignore_index) const {
  LATHE_CHECK(local.dim() == 2 && local.size(1) == rows_ && targets.dim() == 1 && targets.size(0) == local.size(0))
      << "VocabParallelOutput::cross_entropy: logits " << local.shape_str() << " (this rank's " << rows_
      << " columns) and targets " << targets.shape_str() << " do not fit";
  if (!mask_.defined() || mask_.device() != local.device() || mask_.dtype() != local.dtype()) {
    std::vector<float> m(static_cast<size_t>(rows_));
    for (int64_t j = 0; j < rows_; ++j) m[static_cast<size_t>(j)] = start_ + j < vocab_ ? 0.0f : static_cast<float>(kPadLogit);
    const_cast<Tensor&>(mask_) = Tensor::from_vector<float>(m, {rows_}).to(local.dtype()).to(local.device());
  }
  // Megatron's vocab-parallel cross-entropy: loss = log(sum_j exp(x_j - m)) - (x_target - m),
  // with the max m, the sum and the target logit each all-reduced over the ranks.
  Tensor x = ag::add(local, mask_);
  Tensor m = kernels::reduce(kernels::ReduceOp::max, x.detach(), {1}, true);
  comm_->all_reduce(m, ReduceOp::max);
  Tensor z = ag::sub(x, m);
  Tensor sum_exp = reduce_from_tp(ag::sum(ag::exp(z), {1}), comm_);
  Tensor t = targets.to(DType::i64);
  Tensor rel = kernels::binary(kernels::BinaryOp::sub, t, scalar_like(static_cast<double>(start_), DType::i64, t));
  Tensor ge = kernels::binary(kernels::BinaryOp::ge, rel, scalar_like(0, DType::i64, t));
  Tensor lt = kernels::binary(kernels::BinaryOp::lt, rel, scalar_like(static_cast<double>(rows_), DType::i64, t));
  Tensor zero_f = scalar_like(0, local.dtype(), local);
  Tensor one_f = scalar_like(1, local.dtype(), local);
  Tensor mine = kernels::where(ge, kernels::where(lt, one_f, zero_f), zero_f);
  Tensor idx = kernels::where(mine, rel, scalar_like(0, DType::i64, t)).unsqueeze(1);
  Tensor picked = ag::mul(ag::reshape(ag::gather(z, 1, idx), {-1}), mine);
  Tensor target_logit = reduce_from_tp(picked, comm_);
  Tensor per_token = ag::sub(ag::log(sum_exp), target_logit);
  Tensor valid = kernels::where(kernels::binary(kernels::BinaryOp::ne, t, scalar_like(static_cast<double>(ignore_index), DType::i64, t)),
                                one_f, zero_f);
  Tensor count = kernels::reduce(kernels::ReduceOp::sum, valid, {0}, false);
  return ag::div(ag::sum(ag::mul(per_token, valid)), count);
}

namespace {

class PendingAllReduce final : public models::PendingSum {
 public:
  PendingAllReduce(WorkPtr work, Tensor buf, Tensor partial)
      : work_(std::move(work)), buf_(std::move(buf)), partial_(std::move(partial)) {}
  Tensor wait() override {
    work_->wait();
    return ag::record("tp_reduce_async", buf_, {partial_},
                      [](const std::vector<Tensor>& g, const std::vector<bool>&) { return std::vector<Tensor>{g[0]}; });
  }

 private:
  WorkPtr work_;
  Tensor buf_, partial_;
};

class Done final : public models::PendingSum {
 public:
  explicit Done(Tensor t) : t_(std::move(t)) {}
  Tensor wait() override { return t_; }

 private:
  Tensor t_;
};

}  // namespace

std::unique_ptr<models::PendingSum> TensorParallelReducer::start(const Tensor& partial) {
  if (comm_->size() == 1) return std::make_unique<Done>(partial);
  Tensor buf = partial.detach().clone();
  WorkPtr w = comm_->all_reduce_async(buf);
  return std::make_unique<PendingAllReduce>(std::move(w), std::move(buf), partial);
}

// ---- sharding rules ----------------------------------------------------------------------

int shard_dim(const std::string& name, const models::ModelSpec& spec) {
  static const char* rows[] = {"attn.q_proj.weight", "attn.q_proj.bias",  "attn.k_proj.weight", "attn.k_proj.bias",
                               "attn.v_proj.weight", "attn.v_proj.bias",  "mlp.fc.weight",      "mlp.fc.bias",
                               "mlp.gate_proj.weight", "mlp.gate_proj.bias", "mlp.up_proj.weight", "mlp.up_proj.bias"};
  static const char* cols[] = {"attn.o_proj.weight", "mlp.proj.weight", "mlp.down_proj.weight"};
  if (name == "embed.weight" || name == "lm_head.weight") return 0;
  // Adapter factors (parallel/tp_lora.h): B of a column-parallel layer by rows, A of a
  // row-parallel layer by columns; the other factors are replicated.
  for (const auto& [factor, dim] : {std::pair<const char*, int>{".lora_B.weight", 0}, {".lora_A.weight", 1}})
    if (ends_with(name, factor)) {
      const std::string base = name.substr(0, name.size() - std::strlen(factor)) + ".weight";
      return base != "lm_head.weight" && shard_dim(base, spec) == dim ? dim : -1;
    }
  for (const char* r : rows)
    if (ends_with(name, r)) return 0;
  for (const char* c : cols)
    if (ends_with(name, c)) return 1;
  return -1;
}

namespace {
bool is_vocab(const std::string& name) { return name == "embed.weight" || name == "lm_head.weight"; }
}  // namespace

Tensor slice_shard(const std::string& name, const Tensor& full, const models::ModelSpec& spec, int tp, int rank,
                   int64_t vocab_pad_multiple) {
  const int d = shard_dim(name, spec);
  if (d < 0 || tp == 1) return full;
  Tensor src = full;
  if (is_vocab(name)) {
    const int64_t vp = padded_vocab(full.size(0), tp, vocab_pad_multiple);
    src = Tensor::zeros({vp, full.size(1)}, full.dtype(), full.device());
    src.narrow(0, 0, full.size(0)).copy_(full);
  }
  LATHE_CHECK(src.size(d) % tp == 0) << "tensor parallelism: " << name << " " << src.shape_str() << " dim " << d
                                     << " is not divisible by tensor_parallel " << tp;
  const int64_t n = src.size(d) / tp;
  return src.narrow(d, rank * n, n).contiguous();
}

int64_t real_shard_numel(const std::string& name, const Tensor& shard, const models::ModelSpec& spec, int rank) {
  if (!is_vocab(name) || shard_dim(name, spec) < 0) return shard.numel();
  const int64_t rows = shard.size(0);
  const int64_t real = std::clamp<int64_t>(spec.vocab_size - rank * rows, 0, rows);
  return real * (shard.numel() / std::max<int64_t>(rows, 1));
}

Tensor gather_shards(const std::string& name, const std::vector<Tensor>& shards, const models::ModelSpec& spec) {
  LATHE_CHECK(!shards.empty()) << "gather_shards: no shards of " << name;
  const int d = shard_dim(name, spec);
  if (d < 0 || shards.size() == 1) {
    if (is_vocab(name) && shards[0].size(0) > spec.vocab_size) return shards[0].narrow(0, 0, spec.vocab_size).contiguous();
    return shards[0];
  }
  Tensor full = kernels::concat(shards, d);
  if (is_vocab(name)) full = full.narrow(0, 0, spec.vocab_size).contiguous();
  return full;
}

Tensor all_gather_shards(const std::string& name, const Tensor& shard, Communicator& tp, const models::ModelSpec& spec) {
  const Tensor in = shard.contiguous();
  const int64_t n = in.numel();
  Tensor all = Tensor::empty({n * tp.size()}, in.dtype(), in.device());
  tp.all_gather(in.view({-1}), all);
  std::vector<Tensor> parts;
  for (int r = 0; r < tp.size(); ++r) parts.push_back(all.narrow(0, r * n, n).view(in.shape()));
  return gather_shards(name, parts, spec);
}

TensorParallelShards shard_for_tensor_parallel(models::CausalLM& model, const CommPtr& comm,
                                               int64_t vocab_pad_multiple, bool sp) {
  const models::ModelSpec& s = model.spec();
  TensorParallelShards out;
  out.tp = comm->size();
  out.rank = comm->rank();
  out.padded_vocab = padded_vocab(s.vocab_size, out.tp, vocab_pad_multiple);
  const int t = out.tp, r = out.rank;
  if (t == 1) return out;
  LATHE_CHECK(s.n_head % t == 0) << "tensor parallelism: model.n_head (" << s.n_head
                                 << ") is not divisible by parallel.tensor_parallel (" << t << ")";
  LATHE_CHECK(s.kv_heads() % t == 0) << "tensor parallelism: model.n_kv_head (" << s.kv_heads()
                                     << ") is not divisible by parallel.tensor_parallel (" << t << ")";
  LATHE_CHECK(s.ff_dim() % t == 0) << "tensor parallelism: the MLP width model.d_ff (" << s.ff_dim()
                                   << ") is not divisible by parallel.tensor_parallel (" << t << ")";
  const bool reduce_rows = !s.ladder_residual;
  LATHE_CHECK(!(sp && s.ladder_residual)) << "tensor parallelism: Megatron sequence parallelism and the Ladder "
                                             "residual cannot be combined (the ladder defers an all-reduce, not a "
                                             "reduce-scatter)";
  auto full_linear = [&](const std::string& path) {
    auto lin = std::dynamic_pointer_cast<models::Linear>(model.module(path));
    LATHE_CHECK(lin) << "tensor parallelism: " << path << " is a " << model.module(path)->type_name()
                     << ", expected a plain Linear or a LoRA adapter";
    return lin;
  };
  auto shard = [&](const std::string& name, const Tensor& full) {
    if (!full.defined()) return Tensor();
    if (shard_dim(name, s) >= 0) out.sharded.insert(name);
    return slice_shard(name, full, s, t, r, vocab_pad_multiple);
  };
  // Adapter fine-tuning (the adapters injected into the full model first): what is frozen
  // stays frozen in the shards, and adapted layers shard with their factors (parallel/tp_lora.h).
  std::set<std::string> frozen;
  for (const auto& [name, p] : model.named_parameters())
    if (!p.requires_grad()) frozen.insert(name);
  auto adapted = [&](const std::string& path) {
    return std::dynamic_pointer_cast<peft::LoraLinear>(model.module(path)) != nullptr;
  };
  auto column = [&](const std::string& path) {
    if (adapted(path)) return shard_lora_layer(model, path, true, comm, sp, reduce_rows, out);
    auto lin = full_linear(path);
    model.replace_module(path, std::make_shared<ColumnParallelLinear>(shard(path + ".weight", lin->weight()),
                                                                      shard(path + ".bias", lin->bias()), comm, sp));
  };
  auto row = [&](const std::string& path) {
    if (adapted(path)) return shard_lora_layer(model, path, false, comm, sp, reduce_rows, out);
    auto lin = full_linear(path);
    model.replace_module(path, std::make_shared<RowParallelLinear>(shard(path + ".weight", lin->weight()),
                                                                   lin->bias(), comm, reduce_rows, sp));
    // The bias is added once (ladder: on rank 0) or on each sequence slice (SP): either way
    // each rank's gradient covers part of it.
    if ((!reduce_rows || sp) && lin->bias().defined() && !frozen.count(path + ".bias"))
      out.partial_grad.push_back(path + ".bias");
  };
  for (int64_t i = 0; i < s.n_layer; ++i) {
    const std::string L = "layers." + std::to_string(i);
    auto attn = std::dynamic_pointer_cast<models::Attention>(model.module(L + ".attn"));
    LATHE_CHECK(attn) << "tensor parallelism: " << L << ".attn is not an Attention";
    for (const char* p : {".attn.q_proj", ".attn.k_proj", ".attn.v_proj"}) column(L + p);
    row(L + ".attn.o_proj");
    attn->n_head /= t;
    attn->n_kv_head /= t;
    auto mlp = model.module(L + ".mlp");
    if (std::dynamic_pointer_cast<models::GeluMLP>(mlp)) {
      column(L + ".mlp.fc");
      row(L + ".mlp.proj");
    } else if (std::dynamic_pointer_cast<models::SwiGLU>(mlp)) {
      column(L + ".mlp.gate_proj");
      column(L + ".mlp.up_proj");
      row(L + ".mlp.down_proj");
    } else {
      LATHE_FAIL() << "tensor parallelism: " << L << ".mlp is a " << mlp->type_name() << ", which has no sharding rule";
    }
  }
  const int64_t rows = out.padded_vocab / t, start = r * rows;
  auto emb = std::dynamic_pointer_cast<models::Embedding>(model.module("embed"));
  model.replace_module("embed",
                       std::make_shared<VocabParallelEmbedding>(shard("embed.weight", emb->weight()), start, comm, sp));
  if (!s.tie_embeddings) column("lm_head");
  model.set_tensor_parallel(std::make_shared<VocabParallelOutput>(s.vocab_size, start, rows, comm),
                            s.ladder_residual ? std::make_shared<TensorParallelReducer>(comm) : nullptr);
  if (sp) {
    model.set_sequence_parallel(std::make_shared<SequenceParallelShard>(comm));
    // Megatron-SP: norms see only this rank's tokens, so their gradients are partial sums.
    for (const auto& [name, p] : model.named_parameters())
      if (name.find("norm.") != std::string::npos && !frozen.count(name)) out.partial_grad.push_back(name);
  }
  for (const auto& [name, p] : model.named_parameters())
    if (frozen.count(name)) p.set_requires_grad(false);
  return out;
}

void all_reduce_partial_grads(const autograd::Module& model, const std::vector<std::string>& names,
                              Communicator& comm) {
  if (comm.size() == 1) return;
  for (const auto& n : names) {
    Tensor p = model.parameter(n);
    Tensor g = p.grad();
    if (!g.defined()) {
      g = Tensor::zeros(p.shape(), p.dtype(), p.device());
      p.set_grad(g);
    }
    comm.all_reduce(g);
  }
}

double tp_grad_norm(const std::vector<std::pair<std::string, Tensor>>& params, const TensorParallelShards& shards,
                    Communicator& comm, Communicator* zero_dp) {
  double sharded = 0, replicated = 0;
  for (const auto& [name, p] : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    const double n = kernels::reduce(kernels::ReduceOp::norm, g.to(DType::f32), {}, false).item();
    (shards.sharded.count(name) ? sharded : replicated) += n * n;
  }
  if (zero_dp && zero_dp->size() > 1) {
    Tensor s = Tensor::from_vector<double>({sharded, replicated}, {2});
    zero_dp->all_reduce(s);
    const std::vector<double> v = s.to_vector<double>();
    sharded = v[0];
    replicated = v[1];
  }
  if (comm.size() > 1) {
    Tensor s = Tensor::scalar(sharded, DType::f64);
    comm.all_reduce(s);
    sharded = s.item();
  }
  return std::sqrt(sharded + replicated);
}

}  // namespace lathe::parallel
