// SpIEL through the Trainer (the path `lathe finetune` takes): the budget is kept exactly
// through every reselection, selection phases come and go on the schedule (W never takes a
// gradient of its own), regrown entries restart their Adam age as seeded, SpIEL-MA regrows
// from the SM3 moments, a resumed run equals an uninterrupted one bit for bit (stopped in the
// middle of a selection phase), and the adapter reloads with the trained logits. Also the
// values' aged Adam against AdamW.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <set>

#include "autograd/grad_mode.h"
#include "kernels/ops.h"
#include "models/hf_export.h"
#include "models/hf_import.h"
#include "peft/inject.h"
#include "peft/sft_io.h"
#include "tests/common/test_helpers.h"
#include "tests/train/trainer_test_util.h"
#include "train/checkpoint_dir.h"
#include "train/hdf5_io.h"
#include "train/inference.h"
#include "train/peft_spiel.h"
#include "train/trainer.h"

namespace lathe::train {
namespace {

using lathe::test::TmpDir;
const auto logits = test_util::fixed_batch_logits;

// R = 4, S = 2 over 12 steps: phases begin at c = 0, 3, 7, 11; reselections at c = 2 (all
// entries), 6 (p = 0.5 (1 - 6/12) = 0.25) and 10 (p = 0.5 (1 - 10/12)).
RunConfig spiel_config(const std::string& run_dir, const std::string& base, int steps, const std::string& extra = "") {
  return test_util::finetune_config(run_dir, base, steps,
                                    "peft { method: SPIEL spiel_budget: 400 spiel_reselection_steps: 4 "
                                    "spiel_accumulation_steps: 2 spiel_reselection_rate: 0.5 " + extra + "}\n");
}

std::map<std::string, std::vector<int64_t>> all_indices(models::CausalLM& m) {
  std::map<std::string, std::vector<int64_t>> out;
  for (auto& [n, l] : peft::spiel_layers(m)) out[n] = l->indices().to_vector<int64_t>();
  return out;
}

double max_diff(const Tensor& a, const Tensor& b) {
  const auto x = a.to(DType::f64).to_vector<double>(), y = b.to(DType::f64).to_vector<double>();
  double d = 0;
  for (size_t i = 0; i < x.size(); ++i) d = std::max(d, std::abs(x[i] - y[i]));
  return d;
}

TEST(SpielFinetune, BudgetKeptPhasesAndAgesThroughReselection) {
  TmpDir tmp("spiel_budget");
  const std::string base = test_util::write_tiny_hf_base(tmp.path());
  TrainOptions o;
  o.out = nullptr;
  Trainer t(spiel_config(tmp / "run", base, 12), o);
  t.setup();
  ASSERT_NE(t.spiel(), nullptr);
  std::map<std::string, int64_t> budget;
  int64_t total = 0;
  for (auto& [n, l] : peft::spiel_layers(t.model())) {
    budget[n] = l->budget();
    total += l->budget();
    EXPECT_FALSE(l->base_weight().requires_grad()) << n;
  }
  EXPECT_EQ(budget.size(), 2u * 6u);  // all-linear by default
  EXPECT_LE(total, 400);
  EXPECT_GT(total, 400 - 12);
  EXPECT_EQ(t.model().num_parameters(true), total);  // only the values train
  EXPECT_TRUE(t.spiel()->in_phase());
  const auto initial = all_indices(t.model());
  auto ages = [&](const std::string& n) {
    return t.optimizer().param_state(n + ".sft_values").at("age").to_vector<float>();
  };
  std::map<std::string, std::vector<int64_t>> before6;
  for (int step = 1; step <= 12; ++step) {
    if (step == 6) before6 = all_indices(t.model());
    t.train_step();
    const bool phase = step < 2 || (step >= 3 && step < 6) || (step >= 7 && step < 10) || step >= 11;
    EXPECT_EQ(t.spiel()->in_phase(), phase) << "after step " << step;
    // Exactly the budget, distinct indices, in range, every step.
    for (auto& [n, l] : peft::spiel_layers(t.model())) {
      const auto idx = l->indices().to_vector<int64_t>();
      ASSERT_EQ(static_cast<int64_t>(idx.size()), budget[n]);
      EXPECT_EQ(std::set<int64_t>(idx.begin(), idx.end()).size(), idx.size()) << n << " step " << step;
      for (int64_t i : idx) EXPECT_TRUE(i >= 0 && i < l->base_weight().numel());
      EXPECT_FALSE(l->base_weight().grad().defined()) << n;
    }
    if (step == 2) {
      // The first reselection replaced the random init with the phase's largest gradients;
      // the grown entries' age is the phase's length (2), as is every other entry's.
      EXPECT_NE(all_indices(t.model()), initial);
      for (auto& [n, l] : peft::spiel_layers(t.model()))
        for (float a : ages(n)) EXPECT_EQ(a, 2.0f) << n;
    }
    if (step == 6) {
      // p = 0.25: up to int(k / 4) entries regrown; they carry age 3 (steps 4, 5, 6), the rest 6.
      int64_t regrown = 0;
      const auto now = all_indices(t.model());
      for (auto& [n, l] : peft::spiel_layers(t.model())) {
        const auto a = ages(n);
        int64_t young = 0;
        for (size_t i = 0; i < a.size(); ++i) {
          EXPECT_TRUE(a[i] == 3.0f || a[i] == 6.0f) << n << " " << a[i];
          young += a[i] == 3.0f;
          // A slot whose index changed is a young one.
          if (now.at(n)[i] != before6.at(n)[i]) {
            EXPECT_EQ(a[i], 3.0f) << n << " slot " << i;
          }
        }
        EXPECT_LE(young, budget[n] / 4) << n;
        regrown += young;
      }
      EXPECT_GT(regrown, 0);
    }
  }
  EXPECT_EQ(t.spiel()->reselections(), 3);
}

TEST(SpielFinetune, ResumeInsideASelectionPhaseIsBitExact) {
  TmpDir tmp("spiel_resume");
  const std::string base = test_util::write_tiny_hf_base(tmp.path());
  TrainOptions o;
  o.out = nullptr;
  const TrainResult full = train(spiel_config(tmp / "full", base, 10), o);
  TrainOptions first = o;
  first.stop_after = 5;  // in the phase that began at c = 3
  const TrainResult a = train(spiel_config(tmp / "split", base, 10), first);
  ASSERT_EQ(a.end_step, 5);
  H5Reader ck(rank_file(a.last_checkpoint, 0));
  EXPECT_TRUE(ck.exists("spiel/in_phase"));
  for (const auto& n : ck.list_datasets("model")) EXPECT_NE(n.find("sft_values"), std::string::npos) << n;
  TrainOptions second = o;
  second.resume = "latest";
  const TrainResult b = train(spiel_config(tmp / "split", base, 10), second);
  ASSERT_EQ(b.start_step, 5);
  ASSERT_EQ(b.steps.size(), 5u);
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(b.steps[i].loss, full.steps[5 + i].loss) << "step " << 6 + i;
  test_util::expect_same_tensors(rank_file(full.last_checkpoint, 0), rank_file(b.last_checkpoint, 0));
  EXPECT_EQ(lathe::test::read_file(tmp / "full/adapter/adapter_model.safetensors"),
            lathe::test::read_file(tmp / "split/adapter/adapter_model.safetensors"));
}

TEST(SpielFinetune, AdapterReloadsAndCheckpointRebuildsTheModel) {
  TmpDir tmp("spiel_export");
  const std::string base = test_util::write_tiny_hf_base(tmp.path());
  TrainOptions o;
  o.out = nullptr;
  Trainer t(spiel_config(tmp / "run", base, 8), o);
  const TrainResult r = t.run();
  ASSERT_TRUE(r.finished);
  ASSERT_TRUE(peft::is_spiel_adapter(r.adapter_dir));
  auto fresh = models::load_hf_model(base);
  peft::load_spiel_adapter(*fresh, r.adapter_dir);
  EXPECT_EQ(0, std::memcmp(logits(t.model()).raw_data(), logits(*fresh).raw_data(), logits(*fresh).nbytes()));
  LoadedRun lr = load_trained(r.last_checkpoint, {});
  ASSERT_NE(lr.peft, nullptr);
  EXPECT_EQ(all_indices(*lr.model), all_indices(t.model()));
  EXPECT_EQ(0, std::memcmp(logits(t.model()).raw_data(), logits(*lr.model).raw_data(), logits(*lr.model).nbytes()));
}

TEST(SpielFinetune, MomentRegrowthKeepsTheBudgetAndRestartsGrownEntries) {
  TmpDir tmp("spiel_ma");
  const std::string base = test_util::write_tiny_hf_base(tmp.path());
  TrainOptions o;
  o.out = nullptr;
  Trainer t(spiel_config(tmp / "run", base, 12, "spiel_regrow: MA "), o);
  t.setup();
  EXPECT_FALSE(t.spiel()->in_phase());  // no dense gradients at all
  const auto initial = all_indices(t.model());
  for (int step = 1; step <= 2; ++step) t.train_step();
  EXPECT_EQ(t.spiel()->reselections(), 1);
  const auto now = all_indices(t.model());
  EXPECT_NE(now, initial);
  for (auto& [n, l] : peft::spiel_layers(t.model())) {
    const auto& st = t.optimizer().param_state(n + ".sft_values");
    EXPECT_EQ(st.at("sm3_row").numel(), l->out_features());
    EXPECT_EQ(st.at("sm3_col").numel(), l->in_features());
    const auto a = st.at("age").to_vector<float>();
    const auto v = l->values().to_vector<float>();
    for (size_t i = 0; i < a.size(); ++i) {
      if (now.at(n)[i] == initial.at(n)[i]) continue;
      EXPECT_EQ(a[i], 0.0f) << n;  // grown: Adam restarts
      EXPECT_EQ(v[i], 0.0f) << n;
    }
    EXPECT_EQ(static_cast<int64_t>(now.at(n).size()), l->budget());
  }
  const TrainResult r = t.run();
  EXPECT_TRUE(r.finished);
  EXPECT_EQ(t.spiel()->reselections(), 3);
}

TEST(SpielAdam, EqualsAdamWWhenEveryAgeIsTheStepAndRestartsPerEntry) {
  Generator g(3);
  const int64_t k = 64;
  const Tensor p0 = Tensor::randn({k}, g);
  Tensor pa = p0.clone(), pb = p0.clone();
  Tensor ma = Tensor::zeros({k}), va = Tensor::zeros({k}), age = Tensor::zeros({k});
  Tensor mb = Tensor::zeros({k}), vb = Tensor::zeros({k});
  SpielAdamOptions o;
  o.beta1 = 0.9;
  o.beta2 = 0.99;
  o.eps = 1e-8;
  for (int step = 1; step <= 5; ++step) {
    const Tensor grad = Tensor::randn({k}, g);
    spiel_adam_update(pa, grad, ma, va, age, 1e-2, 0.1, o);
    kernels::adamw_step(pb, grad, mb, vb, 1e-2, 0.9, 0.99, 1e-8, 0.1, step, kernels::AdamVariant::torch);
    EXPECT_LT(max_diff(pa, pb), 1e-6) << step;
  }
  // An entry whose state is reset (age 0, m = v = 0) takes a fresh Adam step: |dp| = lr.
  std::vector<float> m = ma.to_vector<float>(), v = va.to_vector<float>(), a = age.to_vector<float>();
  m[7] = v[7] = a[7] = 0.0f;
  ma.copy_(Tensor::from_vector<float>(m, {k}));
  va.copy_(Tensor::from_vector<float>(v, {k}));
  age.copy_(Tensor::from_vector<float>(a, {k}));
  const Tensor before = pa.clone();
  spiel_adam_update(pa, Tensor::full({k}, 0.5), ma, va, age, 1e-2, 0.0, o);
  EXPECT_NEAR(before.to_vector<float>()[7] - pa.to_vector<float>()[7], 1e-2, 1e-6);
  EXPECT_EQ(age.to_vector<float>()[7], 1.0f);
  EXPECT_EQ(age.to_vector<float>()[8], 6.0f);
}

}  // namespace
}  // namespace lathe::train
