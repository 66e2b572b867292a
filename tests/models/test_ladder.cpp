// Ladder residual (ModelSpec::ladder_residual) against a direct implementation of its
// formula (Zhang et al., ICML 2025): sub-modules m = 1..2L (attn1, mlp1, attn2, ...),
// r_1 = embedding, r_m = r_{m-1} + o_{m-2}, logits = head(final_norm(r_2L + o_2L-1 + o_2L)).
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/autograd.h"
#include "models/block.h"
#include "models/layers.h"
#include "models/model.h"

namespace lathe::models {
namespace {

namespace ag = lathe::autograd;

ModelSpec tiny(bool ladder) {
  ModelSpec s;
  s.arch = Arch::gpt2;
  s.vocab_size = 40;
  s.n_layer = 3;
  s.n_head = 2;
  s.d_model = 16;
  s.max_seq_len = 8;
  s.ladder_residual = ladder;
  return s;
}

Tensor ids_of(std::vector<int64_t> v) { return Tensor::from_vector<int64_t>(v, {1, static_cast<int64_t>(v.size())}); }

double max_diff(const Tensor& a, const Tensor& b) {
  auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  double d = 0;
  for (size_t i = 0; i < va.size(); ++i) d = std::max(d, std::abs(va[i] - vb[i]));
  return d;
}

TEST(Ladder, EqualsItsFormula) {
  auto m = build_model(tiny(true), 11);
  m->eval();
  ag::NoGradGuard ng;
  Tensor ids = ids_of({3, 1, 4, 1, 5, 9});
  const int64_t T = ids.size(1);
  auto embed = std::dynamic_pointer_cast<Embedding>(m->module("embed"));
  auto pos = std::dynamic_pointer_cast<Embedding>(m->module("pos_embed"));
  Tensor pos_ids = Tensor::arange(0.0, static_cast<double>(T), 1, DType::i64);
  Tensor x = ag::add(embed->forward(ids), pos->forward(pos_ids));
  // o[m] for m = 1..2L, r[m] its input.
  const int64_t M = 2 * m->spec().n_layer;
  std::vector<Tensor> r(M + 1), o(M + 1);
  Tensor none;
  for (int64_t k = 1; k <= M; ++k) {
    if (k == 1) r[k] = x;
    else r[k] = k >= 3 ? ag::add(r[k - 1], o[k - 2]) : r[k - 1];
    auto b = std::dynamic_pointer_cast<Block>(m->module("layers." + std::to_string((k - 1) / 2)));
    o[k] = (k % 2 == 1) ? b->attention_out(r[k], none, none) : b->mlp_out(r[k]);
  }
  auto fn = std::dynamic_pointer_cast<Norm>(m->module("final_norm"));
  Tensor h = fn->forward(ag::add(ag::add(r[M], o[M - 1]), o[M]));
  Tensor expect = embed->logits(h);
  Tensor got = m->forward(ids);
  EXPECT_LT(max_diff(got, expect), 1e-6);

  // Not the standard block: the same weights give other logits.
  auto standard = build_model(tiny(false), 11);
  standard->eval();
  EXPECT_GT(max_diff(standard->forward(ids), got), 1e-3);
}

TEST(Ladder, SameParametersAsTheStandardModelAndCachedDecodingMatches) {
  auto a = build_model(tiny(true), 5), b = build_model(tiny(false), 5);
  auto pa = a->named_parameters(), pb = b->named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_EQ(pa[i].first, pb[i].first);
    EXPECT_EQ(max_diff(pa[i].second, pb[i].second), 0) << pa[i].first;  // same init: a checkpoint fits both
  }
  SampleOptions o;
  o.max_new_tokens = 6;
  o.temperature = 0;
  auto cached = generate(*a, {1, 2, 3}, o);
  o.use_cache = false;
  EXPECT_EQ(generate(*a, {1, 2, 3}, o), cached);
}

TEST(Ladder, GradientsMatchFiniteDifferences) {
  ModelSpec s = tiny(true);
  s.n_layer = 2;
  auto m = build_model(s, 2);
  m->to(DType::f64);
  Tensor ids = ids_of({1, 2, 3, 4}), tg = ids_of({2, 3, 4, 5});
  Tensor loss = m->loss(ids, tg);
  loss.backward();
  // A weight that only the first MLP reads: its effect reaches the output via o_2 -> r_4.
  Tensor w = m->parameter("layers.0.mlp.fc.weight");
  const double eps = 1e-6;
  for (int64_t j : {0, 7, 33}) {
    Tensor flat = w.view({-1});
    const double g = w.grad().view({-1}).to_vector<double>()[static_cast<size_t>(j)];
    const double w0 = flat.narrow(0, j, 1).item();
    double lp, lm;
    {
      ag::NoGradGuard ng;
      flat.narrow(0, j, 1).fill_(w0 + eps);
      lp = m->loss(ids, tg).item();
      flat.narrow(0, j, 1).fill_(w0 - eps);
      lm = m->loss(ids, tg).item();
      flat.narrow(0, j, 1).fill_(w0);
    }
    EXPECT_NEAR(g, (lp - lm) / (2 * eps), 1e-6 + 1e-5 * std::abs(g)) << j;
  }
}

}  // namespace
}  // namespace lathe::models
