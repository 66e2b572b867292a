// SpIEL sparse fine-tuning: the sparse delta's product equals the dense one, its gradient on
// the selected entries by f64 finite differences (no dense weight gradient), the sparse
// gradient kernel against a reference loop (and CUDA against the CPU when a GPU is present),
// the budget kept exactly at init and through reselection, merge == unmerged on a whole model,
// no weight-gradient GEMM for the frozen base, and the SFT adapter layout round trip.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "autograd/gradcheck.h"
#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "bench/profiling_backend.h"
#include "kernels/backend.h"
#include "kernels/ops.h"
#include "models/safetensors.h"
#include "peft/inject.h"
#include "peft/nola.h"
#include "peft/sft_io.h"
#include "peft/spiel.h"
#include "methods_test_util.h"
#include "tests/common/test_helpers.h"

namespace lathe {
namespace {

namespace ag = lathe::autograd;

TEST(SparseDelta, ProductEqualsDenseDelta) {
  const int64_t out = 5, in = 7;
  const std::vector<int64_t> idx = {0, 8, 13, 20, 34};  // (0,0) (1,1) (1,6) (2,6) (4,6)
  const std::vector<double> val = {0.5, -1.0, 2.0, 0.25, -0.75};
  Generator g(3);
  const Tensor x = Tensor::randn({2, 3, in}, g, DType::f64);
  ag::NoGradGuard ng;
  const auto rc = peft::sparse_rows_cols(Tensor::from_vector<int64_t>(idx, {5}), in);
  EXPECT_EQ(rc.first.to_vector<int64_t>(), (std::vector<int64_t>{0, 1, 1, 2, 4}));
  EXPECT_EQ(rc.second.to_vector<int64_t>(), (std::vector<int64_t>{0, 1, 6, 6, 6}));
  const Tensor y = peft::sparse_delta_linear(x, Tensor::from_vector<double>(val, {5}), rc.first, rc.second, out);
  std::vector<double> dense(out * in, 0.0);
  for (size_t i = 0; i < idx.size(); ++i) dense[static_cast<size_t>(idx[i])] += val[i];
  const Tensor want = kernels::matmul(x, Tensor::from_vector<double>(dense, {out, in}), false, true);
  EXPECT_EQ(y.shape(), (Shape{2, 3, out}));
  EXPECT_LT(test::max_abs_diff(y, want), 1e-14);
}

TEST(SparseDelta, GradientOnTheSelectedEntriesByFiniteDifferences) {
  const int64_t out = 4, in = 6;
  const Tensor idx = Tensor::from_vector<int64_t>({1, 5, 6, 14, 23}, {5});
  Generator g(9);
  const auto rc = peft::sparse_rows_cols(idx, in);
  auto f = [&](const std::vector<Tensor>& t) { return peft::sparse_delta_linear(t[0], t[1], rc.first, rc.second, out); };
  const auto r = ag::gradcheck(f, {Tensor::randn({3, in}, g, DType::f64), Tensor::randn({5}, g, DType::f64)});
  EXPECT_TRUE(r.ok) << r.message;
}

TEST(SpielSchedule, PhasesAndReselectionFractions) {
  peft::SpielSchedule s;  // R = 20, S = 5, rate 0.2
  s.total_steps = 100;
  std::vector<int64_t> begins, reselects;
  std::vector<double> ps;
  for (int64_t c = 0; c <= 110; ++c) {
    const auto st = peft::spiel_schedule(s, c);
    if (st.begin_phase) begins.push_back(c);
    if (st.reselect) {
      reselects.push_back(c);
      ps.push_back(st.p);
    }
  }
  EXPECT_EQ(begins, (std::vector<int64_t>{19, 39, 59, 79, 99}));
  EXPECT_EQ(reselects, (std::vector<int64_t>{5, 25, 45, 65, 85}));  // 105 > T: skipped
  EXPECT_EQ(ps[0], 1.0);                                             // replaces the random init
  EXPECT_NEAR(ps[1], 0.2 * (1 - 0.25), 1e-15);
  EXPECT_NEAR(ps[4], 0.2 * (1 - 0.85), 1e-15);
  s.cosine = true;
  EXPECT_NEAR(peft::spiel_schedule(s, 45).p, 0.2 * (1 + std::cos(M_PI * 0.45)) / 2, 1e-15);
}

TEST(SpielBudget, ProportionalToNumel) {
  EXPECT_EQ(peft::spiel_budget({100, 300, 600}, 50), (std::vector<int64_t>{5, 15, 30}));
  EXPECT_EQ(peft::spiel_budget({3, 3, 3}, 10), (std::vector<int64_t>{3, 3, 3}));  // int() floors
}

TEST(SparseDeltaLinear, BudgetNoOpGradientsAndMerge) {
  auto base = test::method_linear(6, 5, true, 4);
  Generator gen(2);
  peft::SparseDeltaLinear l(base, 9, gen);
  const std::vector<int64_t> idx = l.indices().to_vector<int64_t>();
  ASSERT_EQ(idx.size(), 9u);
  EXPECT_TRUE(std::is_sorted(idx.begin(), idx.end()));
  EXPECT_EQ(std::set<int64_t>(idx.begin(), idx.end()).size(), 9u);
  for (int64_t i : idx) EXPECT_TRUE(i >= 0 && i < 30);
  Generator g(1);
  const Tensor x = Tensor::randn({4, 6}, g, DType::f32);
  {
    ag::NoGradGuard ng;
    EXPECT_TRUE(test::bit_equal(l.forward(x), base->forward(x)));
  }
  test::randomize(l.values(), 7, 0.5);
  ag::sum(ag::mul(l.forward(x), l.forward(x))).backward();
  EXPECT_TRUE(l.values().grad().defined());
  EXPECT_FALSE(l.base_weight().grad().defined());  // no dense weight gradient
  // The values' gradient is the dense gradient gathered at the indices: dW = dY^T X.
  {
    ag::NoGradGuard ng;
    const Tensor y = l.forward(x);
    const Tensor dy = kernels::affine(y, 2.0, 0.0);  // d/dy of sum(y * y)
    const Tensor dw = kernels::matmul(dy, x, true, false).reshape({30});
    const Tensor want = kernels::index_select(dw, 0, l.indices());
    EXPECT_LT(test::max_abs_diff(l.values().grad(), want), 1e-4);
  }
  ag::NoGradGuard ng;
  const Tensor unmerged = l.forward(x);
  const Tensor w0 = l.base_weight().clone();
  l.merge();
  EXPECT_LT(test::max_abs_diff(l.forward(x), unmerged), 1e-5);
  l.unmerge();
  EXPECT_LT(test::max_abs_diff(l.base_weight(), w0), 1e-6);
}

TEST(SparseDeltaLinear, ReselectKeepsTheBudgetDropsSmallestGrowsLargestGradient) {
  auto base = test::method_linear(4, 3, false, 4);  // 12 entries
  Generator gen(5);
  peft::SparseDeltaLinear l(base, 4, gen);
  // Active indices and values set by hand: |values| 0.1 < 0.2 < 0.3 < 0.4.
  l.indices().copy_(Tensor::from_vector<int64_t>({0, 3, 5, 9}, {4}));
  l.values().copy_(Tensor::from_vector<float>({0.3f, -0.1f, 0.4f, 0.2f}, {4}));
  // Accumulated gradient: the largest |g| at 7, then 3 (active, about to be dropped), then 11.
  std::vector<float> g(12, 0.01f);
  g[7] = -5;
  g[3] = 4;
  g[11] = 3;
  g[0] = 10;  // active and kept: not a candidate
  // p = 0.5: drop 2 (indices 3 and 9), grow 2 (7, then 3 which was dropped: it stays).
  const std::vector<int64_t> replaced = l.reselect(Tensor::from_vector<float>(g, {3, 4}), 0.5);
  EXPECT_EQ(replaced, (std::vector<int64_t>{3}));
  EXPECT_EQ(l.indices().to_vector<int64_t>(), (std::vector<int64_t>{0, 3, 5, 7}));
  EXPECT_EQ(l.values().to_vector<float>(), (std::vector<float>{0.3f, -0.1f, 0.4f, 0.0f}));
  EXPECT_EQ(l.budget(), 4);
  // p = 1 (SpIEL's first reselection): every entry replaced by the 4 largest |g| overall.
  l.reselect(Tensor::from_vector<float>(g, {3, 4}), 1.0);
  std::vector<int64_t> got = l.indices().to_vector<int64_t>();
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<int64_t>{0, 3, 7, 11}));
}


// dv[n] = sum_t x[t, cols[n]] dy[t, rows[n]], written out.
std::vector<double> sparse_grad_reference(const std::vector<double>& x, const std::vector<double>& dy,
                                          const std::vector<int64_t>& rows, const std::vector<int64_t>& cols,
                                          int64_t T, int64_t in, int64_t out) {
  std::vector<double> r(rows.size(), 0.0);
  for (size_t n = 0; n < rows.size(); ++n)
    for (int64_t t = 0; t < T; ++t)
      r[n] += x[static_cast<size_t>(t * in + cols[n])] * dy[static_cast<size_t>(t * out + rows[n])];
  return r;
}

TEST(SparseDeltaGradKernel, MatchesTheReferenceLoopAndRejectsBadIndices) {
  const int64_t T = 37, in = 9, out = 6;
  Generator g(4);
  const Tensor x = Tensor::randn({T, in}, g, DType::f64), dy = Tensor::randn({T, out}, g, DType::f64);
  const std::vector<int64_t> rows = {0, 5, 2, 2, 3}, cols = {8, 0, 4, 4, 1};  // a repeated entry too
  const Tensor r = Tensor::from_vector<int64_t>(rows, {5}), c = Tensor::from_vector<int64_t>(cols, {5});
  const auto want = sparse_grad_reference(x.to_vector<double>(), dy.to_vector<double>(), rows, cols, T, in, out);
  const auto got = kernels::sparse_delta_grad(x, dy, r, c).to_vector<double>();
  for (size_t n = 0; n < want.size(); ++n) EXPECT_NEAR(got[n], want[n], 1e-12) << n;
  // f32 accumulates in f32: close to the f64 result.
  const auto got32 = kernels::sparse_delta_grad(x.to(DType::f32), dy.to(DType::f32), r, c).to_vector<float>();
  for (size_t n = 0; n < want.size(); ++n) EXPECT_NEAR(got32[n], want[n], 1e-4) << n;
  // A strided x (a transposed view) gives the same numbers.
  const Tensor xt = x.transpose(0, 1).contiguous().transpose(0, 1);
  EXPECT_EQ(kernels::sparse_delta_grad(xt, dy, r, c).to_vector<double>(), got);
  EXPECT_ERROR_HAS(kernels::sparse_delta_grad(x, dy, Tensor::from_vector<int64_t>({6}, {1}),
                                              Tensor::from_vector<int64_t>({0}, {1})),
                   "sparse_delta_grad (rows)");
}

// CUDA against the CPU on the same inputs (f32 and bf16), and NOLA's bases generated on the
// device equal to the CPU's bit for bit (the counter-based stream is the same on both).
TEST(SpielNolaCuda, ParityWithTheCpu) {
  if (kernels::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const Device cuda = Device::cuda(0);
  const int64_t T = 300, in = 64, out = 48, k = 200;
  Generator g(11);
  const Tensor x = Tensor::randn({T, in}, g), dy = Tensor::randn({T, out}, g);
  std::vector<int64_t> rows, cols;
  for (int64_t n = 0; n < k; ++n) {
    rows.push_back((n * 7) % out);
    cols.push_back((n * 13) % in);
  }
  const Tensor r = Tensor::from_vector<int64_t>(rows, {k}), c = Tensor::from_vector<int64_t>(cols, {k});
  for (DType dt : {DType::f32, DType::bf16}) {
    const Tensor cpu = kernels::sparse_delta_grad(x.to(dt), dy.to(dt), r, c).to(DType::f32);
    const Tensor dev =
        kernels::sparse_delta_grad(x.to(dt).to(cuda), dy.to(dt).to(cuda), r.to(cuda), c.to(cuda)).to(Device::cpu());
    EXPECT_LT(test::max_abs_diff(cpu, dev.to(DType::f32)), dt == DType::f32 ? 1e-3 : 0.25) << dtype_name(dt);
  }
  peft::NolaKey key{1234, peft::nola_module_key("layers.0.attn.q_proj")};
  const Tensor bc = peft::nola_basis(key, peft::NolaFactor::A, 3, {8, 64}, 0.125, DType::f32, Device::cpu());
  const Tensor bd = peft::nola_basis(key, peft::NolaFactor::A, 3, {8, 64}, 0.125, DType::f32, cuda);
  EXPECT_TRUE(test::bit_equal(bc, bd.to(Device::cpu())));
  const Tensor coef = Tensor::randn({40}, g);
  const Tensor cc = peft::nola_combine(coef, key, peft::NolaFactor::B, {48, 8}, 16);
  const Tensor cd = peft::nola_combine(coef.to(cuda), key, peft::NolaFactor::B, {48, 8}, 16);
  EXPECT_LT(test::max_abs_diff(cc, cd.to(Device::cpu())), 1e-5);
}

peft::PeftOptions spiel_options(int64_t budget) {
  peft::PeftOptions o;
  o.method = peft::Method::spiel;
  o.spiel.budget = budget;
  o.seed = 5;
  return o;
}

TEST(SpielInject, BudgetFromDensitySplitByNumelAndCountedWithoutTheModel) {
  const models::ModelSpec s = test::tiny_llama();
  auto m = models::build_model(s, 1);
  peft::PeftOptions o = spiel_options(0);
  o.spiel.density = 0.02;
  const int64_t total = static_cast<int64_t>(0.02 * static_cast<double>(models::count_parameters(s)));
  const peft::InjectResult res = peft::inject_lora(*m, o);
  // Default targets: every linear but the head (7 per Llama layer).
  EXPECT_EQ(res.adapters.size(), 7u * static_cast<size_t>(s.n_layer));
  int64_t numel = 0, sum = 0;
  for (const auto& a : res.adapters) numel += a.in * a.out;
  for (const auto& a : res.adapters) {
    EXPECT_EQ(a.k, static_cast<int64_t>(static_cast<long double>(total) * (a.in * a.out) / numel)) << a.name;
    sum += a.k;
  }
  EXPECT_LE(sum, total);
  EXPECT_GT(sum, total - static_cast<int64_t>(res.adapters.size()));  // int() loses < 1 per module
  EXPECT_EQ(m->num_parameters(true), sum);
  EXPECT_EQ(peft::lora_parameter_count(s, o), sum);
  EXPECT_EQ(peft::spiel_layers(*m).size(), res.adapters.size());
  for (auto& [n, l] : peft::spiel_layers(*m)) EXPECT_FALSE(l->base_weight().requires_grad()) << n;
  // A budget too small for a module names the field.
  EXPECT_ERROR_HAS(peft::inject_lora(*models::build_model(s, 1), spiel_options(3)), "peft.spiel_budget");
}

TEST(SpielModel, MergedEqualsUnmergedAndUnmergeRestoresTheBase) {
  for (const models::ModelSpec& s : {test::tiny_gpt2(), test::tiny_llama()}) {
    auto m = models::build_model(s, 3);
    std::map<std::string, Tensor> w0;
    for (auto& [n, p] : m->named_parameters()) w0[n] = p.clone();
    peft::inject_lora(*m, spiel_options(900));
    uint64_t seed = 40;
    for (auto& [n, l] : peft::spiel_layers(*m)) test::randomize(l->values(), seed++, 0.3);
    const Tensor ids = test::test_ids(2, 7, s.vocab_size);
    const Tensor base = [&] {
      auto b = models::build_model(s, 3);
      return test::eval_logits(*b, ids);
    }();
    const Tensor unmerged = test::eval_logits(*m, ids);
    EXPECT_GT(test::max_abs_diff(unmerged, base), 1e-3);  // the deltas change the model
    peft::merge_adapters(*m);
    EXPECT_LT(test::max_abs_diff(test::eval_logits(*m, ids), unmerged), 1e-5);
    peft::unmerge_adapters(*m);
    for (auto& [n, p] : m->named_parameters())
      if (w0.count(n)) {
        EXPECT_LT(test::max_abs_diff(p, w0[n]), 1e-6) << n;
      }
    // merge_and_unload: plain layers with the merged weights.
    EXPECT_EQ(peft::unload_adapters(*m, true), (s.arch == models::Arch::gpt2 ? 6 : 7) * s.n_layer);
    EXPECT_TRUE(peft::spiel_layers(*m).empty());
    EXPECT_LT(test::max_abs_diff(test::eval_logits(*m, ids), unmerged), 1e-5);
  }
}

// "Frozen means frozen" in kernel calls: the backward of a model with SpIEL deltas runs one
// sparse_delta_grad per delta and exactly one matmul fewer per adapted linear than the same
// model with the base weights trainable (the weight-gradient GEMM); with the dense gradient
// collected (a selection phase) the GEMM comes back, into the layer's sink, equal to W's
// gradient, while W itself gets none.
TEST(SpielModel, FrozenBaseRunsNoWeightGradientGemm) {
  const models::ModelSpec s = test::tiny_llama();
  struct Counts {
    int64_t matmul = 0, sparse = 0, layers = 0;
  };
  std::vector<Tensor> sinks, wgrads;
  auto run = [&](int mode) {  // 0 frozen, 1 base trainable, 2 collecting dense gradients
    auto m = models::build_model(s, 1);
    peft::inject_lora(*m, spiel_options(600));
    for (auto& [n, l] : peft::spiel_layers(*m)) {
      if (mode == 1) l->base_weight().set_requires_grad(true);
      if (mode == 2) l->collect_dense_grad(true);
    }
    const Tensor ids = test::test_ids(2, 5, s.vocab_size), tgt = test::test_ids(2, 5, s.vocab_size, 9);
    Tensor loss = m->loss(ids, tgt);
    auto calls = test::count_kernels([&] { loss.backward(); });
    Counts c;
    for (auto& [n, l] : peft::spiel_layers(*m)) {
      ++c.layers;
      EXPECT_EQ(l->base_weight().grad().defined(), mode == 1) << n;
      EXPECT_TRUE(l->values().grad().defined()) << n;
      if (mode == 1) wgrads.push_back(l->base_weight().grad());
      if (mode == 2) sinks.push_back(l->dense_grad().clone());
    }
    c.matmul = calls["matmul"];
    c.sparse = calls["sparse_delta_grad"];
    return c;
  };
  const Counts frozen = run(0), trained = run(1), collecting = run(2);
  EXPECT_EQ(frozen.layers, 7 * s.n_layer);
  EXPECT_EQ(frozen.sparse, frozen.layers);
  EXPECT_EQ(trained.matmul - frozen.matmul, frozen.layers);
  EXPECT_EQ(collecting.matmul - frozen.matmul, frozen.layers);
  ASSERT_EQ(sinks.size(), wgrads.size());
  for (size_t i = 0; i < sinks.size(); ++i) EXPECT_LT(test::max_abs_diff(sinks[i], wgrads[i]), 1e-6) << i;
}

// The SFT layout: keys, the Conv1D transposition and GPT-2's fused c_attn, and a round trip
// that gives the same logits (bit for bit: the same entries in the same slots).
TEST(SpielAdapterIO, SftLayoutRoundTripGpt2AndLlama) {
  for (const models::ModelSpec& s : {test::tiny_gpt2(), test::tiny_llama()}) {
    const bool gpt2 = s.arch == models::Arch::gpt2;
    test::TmpDir tmp(gpt2 ? "sft_gpt2" : "sft_llama");
    auto m = models::build_model(s, 3);
    peft::inject_lora(*m, spiel_options(700));
    uint64_t seed = 70;
    for (auto& [n, l] : peft::spiel_layers(*m)) test::randomize(l->values(), seed++, 0.3);
    peft::save_spiel_adapter(*m, tmp / "ad", "base-dir");
    EXPECT_TRUE(peft::is_spiel_adapter(tmp / "ad"));
    models::SafetensorsFile st(tmp / "ad/adapter_model.safetensors");
    const std::string key = gpt2 ? "base_model.model.transformer.h.0.attn.c_attn.sft_delta."
                                 : "base_model.model.model.layers.0.self_attn.q_proj.sft_delta.";
    ASSERT_TRUE(st.contains(key + "values") && st.contains(key + "indices"));
    auto* q = peft::spiel_layers(*m).front().second;
    const auto qi = q->indices().to_vector<int64_t>();
    const auto fi = st.get(key + "indices").to_vector<int64_t>();
    const int64_t d = s.d_model;
    for (size_t i = 0; i < qi.size(); ++i) {  // q's entries first; GPT-2's Conv1D is [in, 3d]
      const int64_t r = qi[i] / d, c = qi[i] % d;
      EXPECT_EQ(fi[i], gpt2 ? c * 3 * d + r : qi[i]) << i;
    }
    if (gpt2) {
      EXPECT_EQ(st.get(key + "values").numel(), 3 * q->budget());  // q, k and v
    }
    auto fresh = models::build_model(s, 3);
    const peft::InjectResult res = peft::load_spiel_adapter(*fresh, tmp / "ad");
    EXPECT_EQ(res.adapters.size(), peft::spiel_layers(*m).size());
    const Tensor ids = test::test_ids(2, 6, s.vocab_size);
    EXPECT_TRUE(test::bit_equal(test::eval_logits(*fresh, ids), test::eval_logits(*m, ids)));
    EXPECT_EQ(fresh->num_parameters(true), m->num_parameters(true));
    // Loading into a model whose deltas have another budget names the tensor's module.
    auto other = models::build_model(s, 3);
    peft::inject_lora(*other, spiel_options(1400));
    EXPECT_ERROR_HAS(peft::load_spiel_adapter(*other, tmp / "ad"), "whose SpIEL delta has a budget of");
  }
}
}  // namespace
}  // namespace lathe
