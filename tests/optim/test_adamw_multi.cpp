// AdamW::step() batches the parameters of a group into kernels::adamw_step_multi calls; it
// must give exactly (bit for bit) what updating each parameter alone gives, including
// parameters that step_param moved ahead of the others and ones without a gradient.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "core/rng.h"
#include "kernels/ops.h"
#include "optim/adamw.h"

using namespace lathe;
using namespace lathe::optim;

namespace {

Tensor randn(const Shape& s, uint64_t seed, double scale = 1.0) {
  Generator g(seed);
  return kernels::affine(Tensor::randn(s, g, DType::f64), scale, 0.0).to(DType::f32);
}

bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

const std::vector<std::pair<std::string, Shape>> kParams{
    {"a.weight", {37, 67}}, {"a.bias", {37}}, {"b.weight", {5, 3, 7}}, {"c.weight", {11, 4}}, {"c.bias", {11}}};

NamedParams make_params() {
  NamedParams ps;
  for (size_t i = 0; i < kParams.size(); ++i)
    ps.emplace_back(kParams[i].first, randn(kParams[i].second, 10 + i).set_requires_grad());
  return ps;
}

void set_grads(NamedParams& ps, int round) {
  for (size_t i = 0; i < ps.size(); ++i) {
    ps[i].second.set_grad(randn(ps[i].second.shape(), 1000 * round + i, 0.1));
  }
}

}  // namespace

TEST(AdamWMulti, StepBitIdenticalToPerParameterUpdates) {
  AdamWOptions o;
  o.lr = 3e-3;
  o.weight_decay = 0.1;
  NamedParams p1 = make_params(), p2 = make_params();
  AdamW batched(decay_groups(p1, o.weight_decay), o), single(decay_groups(p2, o.weight_decay), o);
  for (int round = 1; round <= 4; ++round) {
    set_grads(p1, round);
    set_grads(p2, round);
    if (round == 2) {
      // c.weight alone gets an extra update first, so its step count runs ahead: step() must
      // then batch it separately (its bias correction differs).
      EXPECT_TRUE(batched.step_param("c.weight"));
      EXPECT_TRUE(single.step_param("c.weight"));
    }
    if (round == 3) {
      // a frozen-for-a-round parameter: no gradient, no update, its step count stays.
      p1[1].second.set_grad(Tensor());
      p2[1].second.set_grad(Tensor());
    }
    batched.step();
    for (const auto& [n, p] : p2) single.step_param(n);  // the per-parameter path
  }
  EXPECT_EQ(batched.step_count(), 4);
  for (size_t i = 0; i < p1.size(); ++i) {
    const std::string& n = p1[i].first;
    EXPECT_EQ(batched.param_step(n), single.param_step(n)) << n;
    EXPECT_TRUE(same_bits(p1[i].second, p2[i].second)) << n << " param";
    for (const char* k : {"exp_avg", "exp_avg_sq"})
      EXPECT_TRUE(same_bits(batched.param_state(n).at(k), single.param_state(n).at(k))) << n << " " << k;
  }
  EXPECT_EQ(batched.param_step("c.weight"), 5);
  EXPECT_EQ(batched.param_step("a.bias"), 3);
  // The parameters did move.
  EXPECT_FALSE(same_bits(p1[0].second, randn(kParams[0].second, 10)));
}
