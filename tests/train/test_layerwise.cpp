// Layer-wise optimizer updates (optimizer.layerwise, train/layerwise.h) in-process, one rank:
// the same parameters, optimizer state and losses as the ordinary step, bit for bit, for every
// optimizer in kOptimizers, with and without gradient accumulation; exact resume; the peak
// gradient memory; the config errors. Data parallelism: tests/cli/test_cli_dp.cpp and
// tests/parallel/test_data_parallel.cpp.
//
// Why bit for bit and not a tolerance: each update reads the same gradient (the hook fires when
// it is final; the in-place update in the middle of backward is never read again), the same
// per-parameter state and the same learning rate, and runs the same per-element arithmetic
// (AdamW's multi-tensor step is bit-identical to its per-parameter update, tested in
// tests/optim/test_adamw_multi.cpp). Only the order in which parameters are updated differs,
// and no update reads another parameter. A tolerance would hide a gradient read too early or
// an lr applied twice.
#include <gtest/gtest.h>

#include <ostream>
#include <string>
#include <vector>

#include "autograd/autograd.h"
#include "core/memory.h"
#include "optim/sgd.h"
#include "parallel/single_process_communicator.h"
#include "tests/common/test_helpers.h"
#include "tests/train/trainer_test_util.h"
#include "train/checkpoint_dir.h"
#include "train/grad_sync.h"
#include "train/layerwise.h"
#include "train/trainer.h"

namespace lathe::train {
namespace {

using test::TmpDir;

TrainOptions quiet() {
  TrainOptions o;
  o.out = nullptr;
  return o;
}

// The optimizers layer-wise updates are checked with: optimizer { } fields each. Every
// optimizer goes through the same Optimizer::step_param path, so a new one is one line here
// (SGD-SaI, GaLore, Fira, 8-bit and paged states once they are registered).
struct OptimizerCase {
  std::string name;
  std::string fields;
};
void PrintTo(const OptimizerCase& c, std::ostream* os) { *os << c.name; }
const std::vector<OptimizerCase> kOptimizers = {
    {"AdamW", "type: ADAMW lr: 3e-3 weight_decay: 0.1"},
    {"SgdMomentum", "type: SGD lr: 0.05 sgd_momentum: 0.9 weight_decay: 0.01"},
    {"SgdNesterov", "type: SGD lr: 0.05 sgd_momentum: 0.9 nesterov: true"},
    {"SgdPlain", "type: SGD lr: 0.1"},
    {"SgdSai", "type: SGD_SAI lr: 1e-3 weight_decay: 0.01"},
    {"AdamW8bit", "type: ADAMW lr: 3e-3 weight_decay: 0.1 state_bits: 8 eight_bit { min_8bit_size: 0 }"},
    {"GaLore", "type: GALORE lr: 3e-3 galore { rank: 4 update_proj_gap: 2 scale: 0.25 }"},
    {"GaLoreRandomized8bit",
     "type: GALORE lr: 3e-3 state_bits: 8 eight_bit { min_8bit_size: 0 } "
     "galore { rank: 4 update_proj_gap: 2 svd: RANDOMIZED }"},
    {"Fira", "type: FIRA lr: 3e-3 galore { rank: 4 update_proj_gap: 2 scale: 0.25 }"},
    {"NaturalGaLore", "type: GALORE lr: 3e-3 galore { rank: 4 update_proj_gap: 2 natural: true natural_history: 3 }"},
};

// The tiny trainer-test run (2-layer GPT-2, dropout on) with the given optimizer fields,
// grad_accum, no clipping, a warmup-then-cosine schedule (a different lr every step, so an lr
// applied at the wrong step or twice shows), and a final checkpoint only.
RunConfig config(const std::string& run_dir, const std::string& opt_fields, int grad_accum, bool layerwise,
                 int steps = 5) {
  std::string text = test_util::tiny_config_text(run_dir, steps);
  auto replace = [&](const std::string& from, const std::string& to) {
    const size_t at = text.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    text.replace(at, from.size(), to);
  };
  replace("optimizer { lr: 3e-3 weight_decay: 0.1 }",
          "optimizer { " + opt_fields + (layerwise ? " layerwise: true" : "") + " }");
  replace("grad_accum: 2", "grad_accum: " + std::to_string(grad_accum) + " grad_clip: 0");
  replace("warmup_steps: 3", "warmup_steps: 2");
  replace("checkpoint { interval: 4 ", "checkpoint { interval: 0 ");
  return configs::parse_text(text, "layerwise_test");
}

std::string final_file(const std::string& run_dir, int64_t step) {
  return rank_file(step_dir(run_dir + "/checkpoints", step), 0);
}

class LayerwiseEquivalence : public ::testing::TestWithParam<std::tuple<OptimizerCase, int>> {};

TEST_P(LayerwiseEquivalence, SameParametersStateAndLossesAsTheOrdinaryStep) {
  const auto& [opt, accum] = GetParam();
  TmpDir tmp;
  const std::string a_dir = tmp / "ordinary", b_dir = tmp / "layerwise";
  TrainResult a = train(config(a_dir, opt.fields, accum, false), quiet());
  Trainer lw(config(b_dir, opt.fields, accum, true), quiet());
  TrainResult b = lw.run();
  // The layer-wise path really ran: every parameter of the last step was stepped from its hook
  // (each gets a gradient in every micro-batch), none was left for finish().
  ASSERT_NE(lw.layerwise(), nullptr);
  int64_t n_params = 0;
  for (const auto& g : lw.optimizer().groups()) n_params += static_cast<int64_t>(g.params.size());
  EXPECT_EQ(lw.layerwise()->updated_before_finish(), n_params);
  EXPECT_EQ(lw.layerwise()->updated_in_finish(), 0);
  ASSERT_EQ(a.steps.size(), 5u);
  ASSERT_EQ(b.steps.size(), 5u);
  for (size_t i = 0; i < a.steps.size(); ++i) {
    SCOPED_TRACE("step " + std::to_string(i + 1));
    EXPECT_EQ(a.steps[i].loss, b.steps[i].loss);
    EXPECT_EQ(a.steps[i].lr, b.steps[i].lr);
    EXPECT_EQ(a.steps[i].grad_norm, b.steps[i].grad_norm);  // summed in the same order
    EXPECT_GT(b.steps[i].grad_norm, 0);
  }
  EXPECT_NE(a.steps[0].lr, a.steps[1].lr);
  // Weights, optimizer state (moments, per-parameter and global step counts), data position
  // and dropout RNG.
  test_util::expect_same_tensors(final_file(a_dir, 5), final_file(b_dir, 5));
}

INSTANTIATE_TEST_SUITE_P(Optimizers, LayerwiseEquivalence,
                         ::testing::Combine(::testing::ValuesIn(kOptimizers), ::testing::Values(1, 3)),
                         [](const ::testing::TestParamInfo<std::tuple<OptimizerCase, int>>& info) {
                           return std::get<0>(info.param).name + "_grad_accum" +
                                  std::to_string(std::get<1>(info.param));
                         });

// Stopped after step 3 and resumed: the same losses and final checkpoint, bit for bit, as a
// run that never stopped (grad_accum 3, dropout on, AdamW moments restored).
TEST(Layerwise, ResumeIsBitExact) {
  TmpDir tmp;
  const std::string a_dir = tmp / "straight", b_dir = tmp / "stopped";
  TrainResult a = train(config(a_dir, kOptimizers[0].fields, 3, true, 7), quiet());
  TrainOptions stop = quiet();
  stop.stop_after = 3;
  TrainResult b1 = train(config(b_dir, kOptimizers[0].fields, 3, true, 7), stop);
  ASSERT_EQ(b1.end_step, 3);
  TrainOptions resume = quiet();
  resume.resume = "latest";
  TrainResult b2 = train(config(b_dir, kOptimizers[0].fields, 3, true, 7), resume);
  ASSERT_EQ(b2.start_step, 3);
  ASSERT_TRUE(b2.finished);
  std::vector<double> la, lb;
  for (const auto& s : a.steps) la.push_back(s.loss);
  for (const auto* r : {&b1, &b2})
    for (const auto& s : r->steps) lb.push_back(s.loss);
  ASSERT_EQ(la.size(), 7u);
  EXPECT_EQ(la, lb);
  test_util::expect_same_tensors(final_file(a_dir, 7), final_file(b_dir, 7));
}

// A 4-layer Llama whose largest tensor is a small share of the model. Ordinary step: every
// gradient exists at once before the update, so the step's peak in the gradients category is
// at least the parameter bytes. Layer-wise with grad_accum 1 on one rank: a parameter's
// gradient is freed by its own hook before the next parameter's gradient is created (backward
// runs one node at a time), so at most one gradient exists at any moment and the peak is at
// most the largest parameter's bytes: by construction, not by measurement luck.
TEST(Layerwise, PeakGradientMemoryIsOneParameterNotTheModel) {
  TmpDir tmp;
  auto run = [&](bool layerwise, int64_t& peak_grad, int64_t& param_bytes, int64_t& largest) {
    RunConfig c = config(tmp / (layerwise ? "lw" : "ord"), kOptimizers[0].fields, 1, layerwise, 2);
    auto* m = c.mutable_model();
    m->set_arch(ModelConfig::LLAMA);
    m->set_n_layer(4);
    m->set_n_head(4);
    m->set_d_model(64);
    m->set_dropout(0);
    Trainer t(c, quiet());
    t.setup();
    param_bytes = largest = 0;
    for (const auto& np : t.model().named_parameters()) {
      param_bytes += static_cast<int64_t>(np.second.nbytes());
      largest = std::max<int64_t>(largest, static_cast<int64_t>(np.second.nbytes()));
    }
    t.train_step();
    t.train_step();  // the second step: optimizer state exists, nothing is first-use
    peak_grad = memory_stats().peak_of(MemCategory::gradients);  // train_step resets the peak
    for (const auto& np : t.model().named_parameters()) EXPECT_FALSE(layerwise && np.second.grad().defined());
  };
  int64_t ord_peak = 0, lw_peak = 0, bytes = 0, largest = 0;
  run(false, ord_peak, bytes, largest);
  run(true, lw_peak, bytes, largest);
  ASSERT_LT(largest * 4, bytes) << "the model is meant to have many comparable tensors";
  EXPECT_GE(ord_peak, bytes);
  EXPECT_LE(lw_peak, largest);
  EXPECT_GT(lw_peak, 0);
}

// The updater itself on two hand-made parameters and SGD: b gets a gradient only from the
// first micro-batch, so its hook does not fire in the last backward and finish() steps it; a
// is stepped from its hook. Both end where Optimizer::step() puts them, and the reported norm
// is the global norm of the accumulated gradients.
TEST(Layerwise, ParameterWithoutGradientInTheLastMicroBatchIsSteppedInFinish) {
  auto make = [] {
    optim::NamedParams ps = {{"a", Tensor::from_vector<float>({1.f, -2.f, 0.5f}, {3}).set_requires_grad()},
                             {"b", Tensor::from_vector<float>({3.f, 0.25f}, {2}).set_requires_grad()}};
    return ps;
  };
  auto micro = [](const optim::NamedParams& p, int m) {
    Tensor loss = autograd::sum(autograd::mul(p[0].second, p[0].second));
    if (m == 0) loss = autograd::add(loss, autograd::sum(autograd::mul(p[1].second, 3.0)));
    loss.backward();
  };
  optim::SGDOptions so;
  so.lr = 0.1;
  so.momentum = 0.9;
  auto group = [](const optim::NamedParams& ps) {
    optim::ParamGroup g;
    g.params = ps;
    return std::vector<optim::ParamGroup>{g};
  };
  optim::NamedParams ref = make();
  optim::SGD ref_opt(group(ref), so);
  micro(ref, 0);
  micro(ref, 1);
  const double want_norm = optim::clip_grad_norm({ref[0].second, ref[1].second}, 0);
  ref_opt.step();

  optim::NamedParams p = make();
  optim::SGD opt(group(p), so);
  GradSync sync(p, parallel::world(), 1.0);
  ASSERT_FALSE(sync.active());
  LayerwiseUpdater up(opt, sync);
  up.before_backward(false);
  micro(p, 0);
  EXPECT_TRUE(p[0].second.grad().defined());  // accumulating, not stepped
  up.before_backward(true);
  micro(p, 1);
  EXPECT_FALSE(p[0].second.grad().defined());  // stepped from its hook and freed
  EXPECT_TRUE(p[1].second.grad().defined());
  EXPECT_EQ(up.finish(), want_norm);
  EXPECT_EQ(up.updated_before_finish(), 1);
  EXPECT_EQ(up.updated_in_finish(), 1);
  EXPECT_FALSE(p[1].second.grad().defined());
  for (size_t k = 0; k < 2; ++k)
    EXPECT_EQ(p[k].second.to_vector<float>(), ref[k].second.to_vector<float>()) << p[k].first;
  EXPECT_EQ(opt.step_count(), 1);
  EXPECT_EQ(opt.param_step("b"), 1);
}

TEST(Layerwise, GlobalClippingIsAConfigErrorNamingBothFields) {
  TmpDir tmp;
  RunConfig c = config(tmp / "r", kOptimizers[0].fields, 1, true);
  c.mutable_train()->set_grad_clip(1.0);
  try {
    train(c, quiet());
    FAIL() << "expected a ConfigError";
  } catch (const configs::ConfigError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("optimizer.layerwise: true needs train.grad_clip: 0 (got train.grad_clip 1)"),
              std::string::npos)
        << m;
  }
  // The default grad_clip (1.0) is refused too, so a config that only turns layerwise on
  // says what to change.
  RunConfig d;
  d.set_name("d");
  d.mutable_model()->set_n_layer(2);
  d.mutable_model()->set_n_head(2);
  d.mutable_model()->set_d_model(32);
  d.mutable_train()->set_steps(1);
  d.mutable_optimizer()->set_layerwise(true);
  const std::vector<std::string> errs = configs::validate(d);
  ASSERT_EQ(errs.size(), 1u);
  EXPECT_NE(errs[0].find("train.grad_clip"), std::string::npos) << errs[0];
  d.mutable_train()->set_grad_clip(0);
  EXPECT_TRUE(configs::validate(d).empty());
  d.mutable_optimizer()->set_type(OptimizerConfig::SGD_SAI);
  d.mutable_optimizer()->mutable_sgd_sai()->set_normalize(true);
  ASSERT_EQ(configs::validate(d).size(), 1u);
  EXPECT_NE(configs::validate(d)[0].find("optimizer.sgd_sai.normalize"), std::string::npos);
}

}  // namespace
}  // namespace lathe::train
