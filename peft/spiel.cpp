#include "peft/spiel.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <tuple>

#include "autograd/function.h"
#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "core/error.h"
#include "kernels/ops.h"
#include "models/autocast.h"

namespace lathe::peft {

namespace ag = lathe::autograd;

std::pair<Tensor, Tensor> sparse_rows_cols(const Tensor& indices, int64_t in) {
  LATHE_REQUIRE(in > 0) << "sparse delta: in must be > 0";
  const std::vector<int64_t> idx = indices.to(Device::cpu()).to(DType::i64).contiguous().to_vector<int64_t>();
  std::vector<int64_t> r(idx.size()), c(idx.size());
  for (size_t i = 0; i < idx.size(); ++i) {
    r[i] = idx[i] / in;
    c[i] = idx[i] % in;
  }
  const int64_t k = static_cast<int64_t>(idx.size());
  return {Tensor::from_vector<int64_t>(r, {k}).to(indices.device()), Tensor::from_vector<int64_t>(c, {k}).to(indices.device())};
}

Tensor sparse_delta_linear(const Tensor& x, const Tensor& values, const Tensor& rows, const Tensor& cols, int64_t out,
                           const Tensor& dense_sink) {
  LATHE_REQUIRE(values.dim() == 1 && rows.dim() == 1 && cols.dim() == 1 && values.numel() == rows.numel() &&
                rows.numel() == cols.numel())
      << "sparse delta: values " << values.shape_str() << ", rows " << rows.shape_str() << " and cols "
      << cols.shape_str() << " must be vectors of one length";
  const int64_t k = values.numel();
  const int64_t in = x.size(-1);
  Shape lead(x.shape().begin(), x.shape().end() - 1);
  int64_t T = 1;
  for (int64_t d : lead) T *= d;
  const Tensor x2 = x.detach().contiguous().reshape({T, in});
  const Tensor v = values.detach();
  Tensor y;
  {
    const Tensor p = kernels::binary(kernels::BinaryOp::mul, kernels::index_select(x2, 1, cols), v.reshape({1, k}));
    y = kernels::index_add(Tensor::zeros({T, out}, x.dtype(), x.device()), 1, rows, p);
  }
  Shape yshape = lead;
  yshape.push_back(out);
  y = y.reshape(yshape);
  const Shape xshape = x.shape();
  // Saves x itself (the base linear keeps it too), not the [T, k] gather.
  return ag::record("sparse_delta_linear", y, {x, values},
                    [x2, v, rows, cols, T, k, in, out, xshape, dense_sink](const std::vector<Tensor>& g,
                                                                           const std::vector<bool>& need) {
                      const Tensor g2 = g[0].contiguous().reshape({T, out});
                      Tensor dx, dv;
                      if (need[0]) {
                        const Tensor gp = kernels::index_select(g2, 1, rows);  // dy[:, row_n]  [T, k]
                        const Tensor s = kernels::binary(kernels::BinaryOp::mul, gp, v.reshape({1, k}));
                        dx = kernels::index_add(Tensor::zeros({T, in}, g2.dtype(), g2.device()), 1, cols, s)
                                 .reshape(xshape);
                      }
                      if (need[1])  // one dot product over tokens per selected entry, no dense dW
                        dv = kernels::sparse_delta_grad(x2, g2, rows, cols);
                      if (dense_sink.defined()) {
                        const Tensor dw = kernels::matmul(g2, x2, true, false);  // [out, in]
                        kernels::add_(dense_sink, dw.dtype() == DType::f32 ? dw : dw.to(DType::f32));
                      }
                      return std::vector<Tensor>{dx, dv};
                    });
}

SpielStep spiel_schedule(const SpielSchedule& s, int64_t c) {
  LATHE_REQUIRE(s.reselection_steps > 0 && s.accumulation_steps >= 0 && s.accumulation_steps < s.reselection_steps)
      << "SpIEL: need 0 <= accumulation steps (" << s.accumulation_steps << ") < reselection steps ("
      << s.reselection_steps << ")";
  SpielStep out;
  out.begin_phase = (c + 1) % s.reselection_steps == 0;
  if (c % s.reselection_steps == s.accumulation_steps && c <= s.total_steps) {
    out.reselect = true;
    const double frac = s.total_steps > 0 ? static_cast<double>(c) / static_cast<double>(s.total_steps) : 0.0;
    if (c == s.accumulation_steps) out.p = 1.0;
    else if (s.cosine) out.p = s.rate * (1 + std::cos(3.14159265358979323846 * frac)) / 2;
    else out.p = s.rate * (1 - frac);
  }
  return out;
}

std::vector<int64_t> spiel_budget(const std::vector<int64_t>& numels, int64_t total) {
  int64_t sum = 0;
  for (int64_t n : numels) sum += n;
  std::vector<int64_t> k;
  for (int64_t n : numels)
    k.push_back(sum > 0 ? static_cast<int64_t>(static_cast<long double>(total) * n / sum) : 0);
  return k;
}

SparseDeltaLinear::SparseDeltaLinear(std::shared_ptr<models::LinearLayer> base, int64_t k, Generator& gen)
    : base_(std::move(base)) {
  LATHE_REQUIRE(base_ != nullptr) << "SparseDeltaLinear: no base layer";
  const Tensor w = base_->base_weight();
  const int64_t numel = w.numel();
  LATHE_REQUIRE(k > 0 && k <= numel) << "SpIEL: the budget " << k << " must be in [1, " << numel << "] for a "
                                     << w.shape_str() << " weight";
  register_parameter("weight", w, false);
  if (base_->base_bias().defined()) register_parameter("bias", base_->base_bias(), false);
  // A uniform k-subset: the k smallest of numel uniform scores (ties broken by index), sorted.
  const Tensor scores = Tensor::rand({numel}, gen, DType::f32);
  const std::vector<float> s = scores.to_vector<float>();
  std::vector<int64_t> order(static_cast<size_t>(numel));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int64_t a, int64_t b) { return s[a] != s[b] ? s[a] < s[b] : a < b; });
  order.resize(static_cast<size_t>(k));
  std::sort(order.begin(), order.end());
  values_ = register_parameter("sft_values", Tensor::zeros({k}, DType::f32, w.device()));
  indices_ = register_buffer("sft_indices", Tensor::from_vector<int64_t>(order, {k}).to(w.device()));
  std::tie(rows_, cols_) = sparse_rows_cols(indices_, w.size(1));
  train(base_->is_training());
}

void SparseDeltaLinear::train(bool on) {
  models::LinearLayer::train(on);
  if (base_) base_->train(on);
}

Tensor SparseDeltaLinear::forward(const Tensor& x) const {
  Tensor y = base_->forward(x);
  if (merged_) return y;
  // Under Autocast the delta runs in the compute dtype (values cast, x already in it).
  const bool ac = models::Autocast::enabled();
  Tensor h = ac ? models::autocast(x) : x.dtype() == values_.dtype() ? x : ag::cast(x, values_.dtype());
  Tensor d = sparse_delta_linear(h, ac ? models::autocast(values_) : values_, rows_, cols_, out_features(), dense_grad_);
  return ag::add(y, d.dtype() == y.dtype() ? d : ag::cast(d, y.dtype()));
}

void SparseDeltaLinear::collect_dense_grad(bool on) {
  dense_grad_ = on ? Tensor::zeros(base_weight().shape(), DType::f32, base_weight().device()) : Tensor();
}

Tensor SparseDeltaLinear::delta_weight() const {
  ag::NoGradGuard ng;
  const int64_t out = out_features(), in = in_features();
  Tensor d = kernels::index_add(Tensor::zeros({out * in}, DType::f32, values_.device()), 0, indices_,
                                values_.to(DType::f32));
  return d.reshape({out, in});
}

namespace {
void add_delta(const Tensor& w, const Tensor& delta, double sign) {
  ag::NoGradGuard ng;
  Tensor wf = w.to(DType::f32);
  kernels::add_(wf, delta, sign);
  w.copy_(wf);
}
}  // namespace

void SparseDeltaLinear::merge() {
  LATHE_REQUIRE(!merged_) << "SparseDeltaLinear::merge: merged already";
  add_delta(base_weight(), delta_weight(), 1.0);
  merged_ = true;
}

void SparseDeltaLinear::unmerge() {
  LATHE_REQUIRE(merged_) << "SparseDeltaLinear::unmerge: not merged";
  add_delta(base_weight(), delta_weight(), -1.0);
  merged_ = false;
}

std::vector<int64_t> SparseDeltaLinear::reselect(const Tensor& grad_acc, double p) {
  LATHE_REQUIRE(grad_acc.shape() == base_weight().shape())
      << "SpIEL reselect: the accumulated gradient has shape " << grad_acc.shape_str() << ", the weight "
      << base_weight().shape_str();
  std::vector<float> g = grad_acc.to(DType::f32).to(Device::cpu()).contiguous().to_vector<float>();
  std::vector<int64_t> cand(g.size());
  std::iota(cand.begin(), cand.end(), 0);
  for (float& x : g) x = std::abs(x);
  return reselect_among(cand, g, p);
}

void SparseDeltaLinear::set_indices(const Tensor& indices, const std::string& what) {
  const int64_t numel = base_weight().numel();
  LATHE_REQUIRE(indices.dim() == 1 && indices.numel() == budget())
      << what << ": " << indices.numel() << " SpIEL indices for a budget of " << budget();
  const std::vector<int64_t> idx = indices.to(Device::cpu()).to(DType::i64).contiguous().to_vector<int64_t>();
  std::set<int64_t> seen;
  for (int64_t i : idx) {
    LATHE_REQUIRE(i >= 0 && i < numel) << what << ": SpIEL index " << i << " is outside [0, " << numel << ") for a "
                                       << base_weight().shape_str() << " weight";
    LATHE_REQUIRE(seen.insert(i).second) << what << ": SpIEL index " << i << " appears twice";
  }
  ag::NoGradGuard ng;
  indices_.copy_(Tensor::from_vector<int64_t>(idx, {budget()}).to(indices_.device()));
  std::tie(rows_, cols_) = sparse_rows_cols(indices_, in_features());
}

std::vector<int64_t> SparseDeltaLinear::reselect_among(const std::vector<int64_t>& candidates,
                                                       const std::vector<float>& g, double p) {
  LATHE_REQUIRE(candidates.size() == g.size())
      << "SpIEL reselect: " << candidates.size() << " candidates but " << g.size() << " scores";
  LATHE_REQUIRE(p >= 0 && p <= 1) << "SpIEL reselect: the fraction must be in [0, 1] (got " << p << ")";
  ag::NoGradGuard ng;
  const int64_t k = budget();
  const int64_t n = static_cast<int64_t>(static_cast<double>(k) * p);
  std::vector<float> v = values_.to(DType::f32).to(Device::cpu()).contiguous().to_vector<float>();
  std::vector<int64_t> idx = indices_.to(Device::cpu()).contiguous().to_vector<int64_t>();
  // Drop: the n smallest |value| (ties by position).
  std::vector<int64_t> pos(static_cast<size_t>(k));
  std::iota(pos.begin(), pos.end(), 0);
  std::stable_sort(pos.begin(), pos.end(), [&](int64_t a, int64_t b) { return std::abs(v[a]) < std::abs(v[b]); });
  std::vector<int64_t> drop(pos.begin(), pos.begin() + n);
  std::set<int64_t> kept;
  for (size_t i = static_cast<size_t>(n); i < pos.size(); ++i) kept.insert(idx[static_cast<size_t>(pos[i])]);
  // Grow: the n largest scores not among the kept entries (ties by index).
  std::vector<size_t> order(g.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return g[a] != g[b] ? g[a] > g[b] : candidates[a] < candidates[b];
  });
  std::vector<int64_t> grow;
  for (size_t o : order) {
    if (static_cast<int64_t>(grow.size()) == n) break;
    if (!kept.count(candidates[o])) grow.push_back(candidates[o]);
  }
  // An index both dropped and regrown stays in its slot with its value.
  std::set<int64_t> grow_set(grow.begin(), grow.end());
  std::vector<int64_t> free_slots;
  std::set<int64_t> staying;
  for (int64_t d : drop) {
    if (grow_set.count(idx[static_cast<size_t>(d)])) staying.insert(idx[static_cast<size_t>(d)]);
    else free_slots.push_back(d);
  }
  std::vector<int64_t> replaced;
  size_t slot = 0;
  for (int64_t c : grow) {
    if (staying.count(c)) continue;
    const int64_t d = free_slots[slot++];
    idx[static_cast<size_t>(d)] = c;
    v[static_cast<size_t>(d)] = 0.0f;
    replaced.push_back(d);
  }
  values_.copy_(Tensor::from_vector<float>(v, {k}).to(values_.dtype()).to(values_.device()));
  indices_.copy_(Tensor::from_vector<int64_t>(idx, {k}).to(indices_.device()));
  std::tie(rows_, cols_) = sparse_rows_cols(indices_, in_features());
  std::sort(replaced.begin(), replaced.end());
  return replaced;
}

}  // namespace lathe::peft
