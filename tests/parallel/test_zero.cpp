// ZeRO-1 (parallel/zero.h, train/zero_setup.h) under mpirun (ctest runs -np 2 and -np 4):
// the whole trainer with parallel.zero_stage 1 against the same run with plain data
// parallelism, on the same ranks and the same global batches. Under TP 2: ZeRO-1 per optimizer,
// GaLore/Fira whole-matrix stand-ins with and without ZeRO, and layer-wise updates, each
// against one process on the same global batch.
//
// Why bit for bit at np 2: the mean of two ranks' gradients is (a + b) / 2 whether it comes
// from the all-reduce or the reduce-scatter, and each rank's optimizer runs the same
// per-element arithmetic on its pieces as on the whole tensors (flat pieces of AdamW and SGD
// are elementwise; GaLore, Fira, 8-bit and SGD-SaI own whole tensors). With 4 ranks the MPI
// library may sum in another order, so the comparison there is to f32 tolerance. Clipping
// sums the squared norms per piece instead of per tensor: tolerance as well.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "configs/config.h"
#include "core/memory.h"
#include "models/hf_export.h"
#include "models/model.h"
#include "parallel/single_process_communicator.h"
#include "parallel/tensor_parallel.h"
#include "parallel/zero.h"
#include "tests/parallel/shared_dir.h"
#include "tests/train/trainer_test_util.h"
#include "train/checkpoint.h"
#include "train/checkpoint_dir.h"
#include "train/layerwise.h"
#include "train/trainer.h"

namespace lathe::train {
namespace {

namespace fs = std::filesystem;
using parallel::Communicator;

std::shared_ptr<Communicator> world() { return parallel::world(); }

using test::SharedDir;

TrainOptions opts(std::shared_ptr<Communicator> comm = world()) {
  TrainOptions o;
  o.out = nullptr;
  o.comm = std::move(comm);
  return o;
}

// Runs `cfg` and returns how much optimizer state it left allocated (MemCategory::
// optimizer_state); with `max_single`, also the largest one parameter's state.
int64_t optimizer_state_after(const RunConfig& cfg, int64_t* max_single = nullptr) {
  const int64_t before = memory_stats().current_of(MemCategory::optimizer_state);
  Trainer t(cfg, opts());
  t.run();
  if (max_single)
    for (const auto& g : t.optimizer().groups())
      for (const auto& np : g.params) {
        int64_t b = 0;
        for (const auto& kv : t.optimizer().param_state(np.first)) b += static_cast<int64_t>(kv.second.nbytes());
        *max_single = std::max(*max_single, b);
      }
  return memory_stats().current_of(MemCategory::optimizer_state) - before;
}


// The tiny trainer-test run (2-layer GPT-2, dropout on) with the given optimizer fields.
RunConfig config(const std::string& run_dir, const std::string& opt_fields, int zero, int grad_accum = 1,
                 double clip = 0, int steps = 4, const std::string& extra = "") {
  std::string text = test_util::tiny_config_text(run_dir, steps);
  auto replace = [&](const std::string& from, const std::string& to) {
    const size_t at = text.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    if (at != std::string::npos) text.replace(at, from.size(), to);
  };
  replace("optimizer { lr: 3e-3 weight_decay: 0.1 }", "optimizer { " + opt_fields + " }");
  replace("grad_accum: 2", "grad_accum: " + std::to_string(grad_accum) + " grad_clip: " + std::to_string(clip));
  replace("warmup_steps: 3", "warmup_steps: 2");
  replace("eval_interval: 4", "eval_interval: 0");
  replace("checkpoint { interval: 4 ", "checkpoint { interval: 0 ");
  replace("parallel { threads_per_rank: 1 }",
          "parallel { threads_per_rank: 1 collective_timeout_s: 30 zero_stage: " + std::to_string(zero) + " }");
  return configs::parse_text(text + extra, "zero_test");
}

struct OptimizerCase {
  std::string name;
  std::string fields;
  parallel::ZeroPartition partition;
};
void PrintTo(const OptimizerCase& c, std::ostream* os) { *os << c.name; }
const std::vector<OptimizerCase> kOptimizers = {
    {"AdamW", "type: ADAMW lr: 3e-3 weight_decay: 0.1", parallel::ZeroPartition::flat},
    {"AdamWHf", "type: ADAMW lr: 3e-3 weight_decay: 0.1 adamw_variant: HF", parallel::ZeroPartition::flat},
    {"SgdMomentum", "type: SGD lr: 0.05 sgd_momentum: 0.9 weight_decay: 0.01", parallel::ZeroPartition::flat},
    {"AdamW8bit", "type: ADAMW lr: 3e-3 weight_decay: 0.1 state_bits: 8 eight_bit { min_8bit_size: 0 }",
     parallel::ZeroPartition::per_parameter},
    {"SgdSai", "type: SGD_SAI lr: 1e-3 weight_decay: 0.01", parallel::ZeroPartition::per_parameter},
    {"GaLore", "type: GALORE lr: 3e-3 galore { rank: 4 update_proj_gap: 2 scale: 0.25 }",
     parallel::ZeroPartition::per_parameter},
    {"Fira", "type: FIRA lr: 3e-3 galore { rank: 4 update_proj_gap: 2 scale: 0.25 }",
     parallel::ZeroPartition::per_parameter},
};

// Largest |a - b| over every parameter of two models (they must have the same names).
double max_param_diff(models::CausalLM& a, models::CausalLM& b, bool* bitwise) {
  double worst = 0;
  *bitwise = true;
  auto pb = b.named_parameters();
  std::map<std::string, Tensor> bm(pb.begin(), pb.end());
  for (const auto& [n, p] : a.named_parameters()) {
    EXPECT_TRUE(bm.count(n)) << n;
    if (!bm.count(n)) continue;
    Tensor x = p.contiguous(), y = bm[n].contiguous();
    if (std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) != 0) *bitwise = false;
    const auto xv = x.to(DType::f64).to_vector<double>(), yv = y.to(DType::f64).to_vector<double>();
    for (size_t i = 0; i < xv.size(); ++i) worst = std::max(worst, std::abs(xv[i] - yv[i]));
  }
  return worst;
}

// Elements of the optimizer's parameters (a ZeRO rank: its pieces).
int64_t optimizer_numel(Trainer& t) {
  int64_t n = 0;
  for (const auto& g : t.optimizer().groups())
    for (const auto& np : g.params) n += np.second.numel();
  return n;
}

int64_t trainable_numel(Trainer& t) {
  int64_t n = 0;
  for (const auto& [name, p] : t.model().named_parameters())
    if (p.requires_grad()) n += p.numel();
  return n;
}

// Runs plain DP and ZeRO-1 on the same config; compares losses, grad norms and parameters.
void expect_zero_equals_plain(const std::string& opt_fields, int grad_accum, double clip, const std::string& extra,
                              parallel::ZeroPartition partition) {
  auto comm = world();
  SharedDir dir(*comm);
  Trainer plain(config(dir / "plain", opt_fields, 0, grad_accum, clip, 4, extra), opts());
  const TrainResult a = plain.run();
  Trainer zero(config(dir / "zero", opt_fields, 1, grad_accum, clip, 4, extra), opts());
  const TrainResult b = zero.run();
  ASSERT_EQ(a.steps.size(), 4u);
  ASSERT_EQ(b.steps.size(), 4u);
  // ZeRO really ran: this rank's optimizer holds only its share, and the shares add up.
  const int64_t total = trainable_numel(zero), mine = optimizer_numel(zero);
  EXPECT_EQ(optimizer_numel(plain), total);
  EXPECT_LT(mine, total);
  Tensor sum = Tensor::from_vector<int64_t>({mine}, {1});
  comm->all_reduce(sum, parallel::ReduceOp::sum);
  EXPECT_EQ(sum.to_vector<int64_t>()[0], total);
  if (partition == parallel::ZeroPartition::per_parameter) {
    // Whole tensors: every piece has its parameter's shape.
    for (const auto& g : zero.optimizer().groups())
      for (const auto& [n, piece] : g.params) EXPECT_EQ(piece.shape(), zero.model().parameter(n).shape()) << n;
  }
  const bool exact = comm->size() == 2 && clip == 0;
  for (size_t i = 0; i < a.steps.size(); ++i) {
    SCOPED_TRACE("step " + std::to_string(i + 1));
    // The norm sums per piece instead of per tensor: equal to rounding only.
    EXPECT_NEAR(a.steps[i].grad_norm, b.steps[i].grad_norm, 1e-5 * a.steps[i].grad_norm);
    if (exact)
      EXPECT_EQ(a.steps[i].loss, b.steps[i].loss);
    else
      EXPECT_NEAR(a.steps[i].loss, b.steps[i].loss, 1e-5 * std::abs(a.steps[i].loss));
  }
  bool bitwise = false;
  const double diff = max_param_diff(plain.model(), zero.model(), &bitwise);
  if (exact)
    EXPECT_TRUE(bitwise) << "max |plain - zero| = " << diff;
  else
    EXPECT_LT(diff, 2e-5);
  // The replicas agree with each other after the all-gather.
  for (const auto& [n, p] : zero.model().named_parameters()) {
    Tensor c = p.contiguous().clone();
    comm->broadcast(c, 0);
    EXPECT_EQ(0, std::memcmp(c.raw_data(), p.contiguous().raw_data(), p.nbytes())) << n << " differs from rank 0's";
  }
}

class ZeroEquivalence : public ::testing::TestWithParam<OptimizerCase> {};

TEST_P(ZeroEquivalence, SameParametersAsPlainDataParallel) {
  expect_zero_equals_plain(GetParam().fields, 1, 0, "", GetParam().partition);
}

TEST_P(ZeroEquivalence, WithGradientAccumulation) {
  expect_zero_equals_plain(GetParam().fields, 3, 0, "", GetParam().partition);
}

INSTANTIATE_TEST_SUITE_P(Optimizers, ZeroEquivalence, ::testing::ValuesIn(kOptimizers),
                         [](const ::testing::TestParamInfo<OptimizerCase>& info) { return info.param.name; });

TEST(Zero, GlobalNormClipping) {
  // A small max norm so that clipping acts in every step (the tiny model's norm is ~1).
  expect_zero_equals_plain(kOptimizers[0].fields, 2, 0.05, "", parallel::ZeroPartition::flat);
}

// LoRA adapters on a pretrained base: only the trainable adapter tensors are sharded.
TEST(Zero, LoraAdapters) {
  auto comm = world();
  SharedDir dir(*comm);
  const std::string base = dir / "base";
  if (comm->rank() == 0) models::save_hf_model(*models::build_model(test_util::tiny_hf_gpt2_spec(), 77), base);
  comm->barrier();
  auto cfg = [&](const std::string& run, int zero) {
    std::string t = test_util::tiny_config_text(run, 4);
    t.replace(t.find("data {"), 6, "data { tokenizer: \"byte\"");
    t.replace(t.find("model {"), 7, "model { init_from: \"" + base + "\"");
    t.replace(t.find("lr: 3e-3"), 8, "lr: 1e-2");
    t.replace(t.find("threads_per_rank: 1"), 19, "threads_per_rank: 1 zero_stage: " + std::to_string(zero));
    t.replace(t.find("checkpoint { interval: 4"), 24, "checkpoint { interval: 0");
    return configs::parse_text(t + "peft { method: LORA r: 4 lora_alpha: 8 target_modules: \"c_attn\" "
                                   "target_modules: \"mlp.fc\" }\n",
                               "zero lora");
  };
  Trainer plain(cfg(dir / "plain", 0), opts());
  plain.run();
  Trainer zero(cfg(dir / "zero", 1), opts());
  zero.run();
  int64_t adapters = 0;
  for (const auto& [n, p] : zero.model().named_parameters())
    if (p.requires_grad()) {
      EXPECT_NE(n.find("lora_"), std::string::npos) << n;
      adapters += p.numel();
    }
  EXPECT_EQ(trainable_numel(zero), adapters);
  EXPECT_LT(optimizer_numel(zero), adapters);
  bool bitwise = false;
  const double diff = max_param_diff(plain.model(), zero.model(), &bitwise);
  if (comm->size() == 2)
    EXPECT_TRUE(bitwise) << "max |plain - zero| = " << diff;
  else
    EXPECT_LT(diff, 2e-5);
}

// ZeRO-1 with tensor parallelism 2 (np 2: dp1 x tp2, np 4: dp2 x tp2): each TP rank's
// shard is ZeRO-sharded over its data-parallel group. The run equals one process on the same
// global batch (micro-batch 4 x dp): losses, the clipped global norm (replicated tensors
// counted once) and every rank's shard of the weights, to f32 tolerance. GPT-2 with its
// byte vocabulary padded to 400 rows (rank 1: 56 real, 144 padding), and Llama with GQA.
struct TpCase {
  std::string name;
  std::string model;  // the model block's fields
  std::string optimizer;
  // 8-bit AdamW quantises blocks of each TP shard, not of the whole tensor: its reference is
  // plain TP (zero_stage 0) on the same ranks, compared bit for bit at np 2.
  bool vs_one_process = true;
};
void PrintTo(const TpCase& c, std::ostream* os) { *os << c.name; }
const std::vector<TpCase> kTpCases = {
    {"Gpt2AdamW", "arch: GPT2 n_layer: 2 n_head: 2 d_model: 32 max_seq_len: 32 dropout: 0.1", kOptimizers[0].fields},
    {"LlamaGqaAdamW", "arch: LLAMA n_layer: 2 n_head: 4 n_kv_head: 2 d_model: 32 max_seq_len: 32",
     kOptimizers[0].fields},
    {"Gpt2Sgd", "arch: GPT2 n_layer: 2 n_head: 2 d_model: 32 max_seq_len: 32 dropout: 0.1", kOptimizers[2].fields},
    {"LlamaGqaAdamW8bit", "arch: LLAMA n_layer: 2 n_head: 4 n_kv_head: 2 d_model: 32 max_seq_len: 32",
     kOptimizers[3].fields, false},
    // One g-SNR per whole tensor: the slices' statistics summed over TP.
    {"Gpt2SgdSai", "arch: GPT2 n_layer: 2 n_head: 2 d_model: 32 max_seq_len: 32 dropout: 0.1", kOptimizers[4].fields},
    {"LlamaGqaSgdSai", "arch: LLAMA n_layer: 2 n_head: 4 n_kv_head: 2 d_model: 32 max_seq_len: 32",
     kOptimizers[4].fields},
};

// Every parameter of `got` equals this TP rank's slice of `one`'s (tp 1: the whole tensor) to
// |a - b| <= 1e-5 + 1e-4 |a|, over more than 10 tensors.
void expect_params_near(const models::CausalLM& got, const models::CausalLM& one, int tp, int tp_rank) {
  int compared = 0;
  for (const auto& [n, p] : got.named_parameters()) {
    const Tensor want =
        tp > 1 ? parallel::slice_shard(n, one.parameter(n), one.spec(), tp, tp_rank, 100) : one.parameter(n);
    ASSERT_EQ(want.shape(), p.shape()) << n;
    const auto x = want.to(DType::f64).to_vector<double>(), y = p.contiguous().to(DType::f64).to_vector<double>();
    double worst = 0;
    for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::abs(x[i] - y[i]) - (1e-5 + 1e-4 * std::abs(x[i])));
    EXPECT_LE(worst, 0.0) << n;
    ++compared;
  }
  EXPECT_GT(compared, 10);
}

RunConfig tp_config(const std::string& run_dir, const TpCase& c, int zero, int tp, int micro_batch, int steps = 4) {
  std::string text = test_util::tiny_config_text(run_dir, steps);
  const std::string from = "arch: GPT2 n_layer: 2 n_head: 2 d_model: 32 max_seq_len: 32 dropout: 0.1";
  text.replace(text.find(from), from.size(), c.model);
  text.replace(text.find("micro_batch: 4"), 14, "micro_batch: " + std::to_string(micro_batch));
  RunConfig cfg = config(run_dir, c.optimizer, zero, 2, 0.05, steps);
  RunConfig m = configs::parse_text(text, "zero tp");
  *cfg.mutable_model() = m.model();
  *cfg.mutable_train() = m.train();
  cfg.mutable_train()->set_grad_clip(0.05);  // acts in every step: the norm must be the whole model's
  cfg.mutable_train()->set_eval_interval(0);
  cfg.mutable_checkpoint()->set_interval(steps / 2);
  cfg.mutable_schedule()->set_warmup_steps(2);
  cfg.mutable_parallel()->set_tensor_parallel(tp);
  cfg.mutable_parallel()->set_vocab_pad_multiple(100);
  return cfg;
}

class ZeroTensorParallel : public ::testing::TestWithParam<TpCase> {};

// TP = 2 with zero_stage `zero` against the case's reference.
void expect_tp_equals_reference(const TpCase& c, int zero) {
  auto comm = world();
  SharedDir dir(*comm);
  const int tp = 2, dp = comm->size() / tp, tp_rank = comm->rank() % tp;
  // The reference: one process on the whole global batch (on every rank, its own run dir), or
  // plain TP on these ranks.
  RunConfig ref = c.vs_one_process ? tp_config(dir / ("one" + std::to_string(comm->rank())), c, 0, 1, 4 * dp)
                                   : tp_config(dir / "plain_tp", c, 0, tp, 4);
  RunConfig run = tp_config(dir / "zero_tp", c, zero, tp, 4);
  // Each DP rank draws its own dropout stream, so the one-process masks of the whole batch
  // are another draw: dropout only where dp is 1.
  if (dp > 1 && c.vs_one_process) {
    ref.mutable_model()->set_dropout(0);
    run.mutable_model()->set_dropout(0);
  }
  Trainer one(ref, c.vs_one_process ? opts(std::make_shared<parallel::SingleProcessCommunicator>()) : opts());
  const TrainResult a = one.run();
  Trainer zt(run, opts());
  const TrainResult b = zt.run();
  ASSERT_EQ(a.steps.size(), 4u);
  ASSERT_EQ(b.steps.size(), 4u);
  for (size_t i = 0; i < a.steps.size(); ++i) {
    SCOPED_TRACE("step " + std::to_string(i + 1));
    EXPECT_NEAR(a.steps[i].grad_norm, b.steps[i].grad_norm, 1e-5 * a.steps[i].grad_norm);
    EXPECT_GT(a.steps[i].grad_norm, 0.05);  // clipping acted
    EXPECT_NEAR(a.steps[i].loss, b.steps[i].loss, 1e-5 * std::abs(a.steps[i].loss));
  }
  // ZeRO really ran over the DP group: the optimizer holds a share of this TP shard.
  const bool projected = c.optimizer.find("GALORE") != std::string::npos || c.optimizer.find("FIRA") != std::string::npos;
  // GaLore/Fira step whole-tensor stand-ins: the one-process parameters, owned whole by the
  // ranks of the DP group under ZeRO.
  const int64_t shard = projected ? trainable_numel(one) : trainable_numel(zt), mine = optimizer_numel(zt);
  if (zero == 1 && dp > 1) {
    EXPECT_LT(mine, shard);
  }
  Tensor sum = Tensor::from_vector<int64_t>({mine}, {1});
  comm->split(tp_rank, comm->rank())->all_reduce(sum, parallel::ReduceOp::sum);  // over this DP group
  if (projected && zero == 0)
    EXPECT_EQ(mine, shard);
  else
    EXPECT_EQ(sum.to_vector<int64_t>()[0], zero == 1 ? shard : shard * dp);
  // Every shard equals the slice of the one-process weights (atol: AdamW normalises
  // near-zero gradients, whose f32 summation order differs).
  expect_params_near(zt.model(), one.model(), c.vs_one_process ? tp : 1, tp_rank);
}

TEST_P(ZeroTensorParallel, EqualsOneProcessOnTheSameGlobalBatch) {
  if (world()->size() % 2 != 0) GTEST_SKIP();
  expect_tp_equals_reference(GetParam(), 1);
}

// SGD-SaI under plain TP (no ZeRO) takes the same g-SNR path.
TEST(TensorParallelSgdSai, EqualsOneProcessOnTheSameGlobalBatch) {
  if (world()->size() % 2 != 0) GTEST_SKIP();
  for (const TpCase& c : kTpCases)
    if (c.name.find("SgdSai") != std::string::npos) {
      SCOPED_TRACE(c.name);
      expect_tp_equals_reference(c, 0);
    }
}

// Stopped after step 2 and resumed: every rank's files (its weight shard, its optimizer-state
// shard of that weight shard, data position, RNG) equal those of a run that never stopped.
void expect_tp_resume_bit_exact(const TpCase& c, int zero) {
  auto comm = world();
  SharedDir dir(*comm);
  test_util::expect_resume_bit_exact([&](const std::string& d) { return tp_config(d, c, zero, 2, 4); },
                                     dir / "straight", dir / "stopped", opts(), 2, 4, comm->rank());
}

// GaLore and Fira under TP = 2 (no ZeRO): whole-matrix stand-ins (train/tp_whole_tensors.h)
// give the one-process projections and updates; resume is bit-exact.
const std::vector<TpCase> kTpProjected = {
    {"Gpt2GaLore", "arch: GPT2 n_layer: 2 n_head: 2 d_model: 32 max_seq_len: 32 dropout: 0.1", kOptimizers[5].fields},
    {"LlamaGqaFira", "arch: LLAMA n_layer: 2 n_head: 4 n_kv_head: 2 d_model: 32 max_seq_len: 32",
     kOptimizers[6].fields},
};

// Also with ZeRO-1 on top (at np 4: dp2 x tp2): the stand-ins are owned whole by the
// data-parallel ranks, each stepping its matrices' projected state; still the one-process run.
TEST(TensorParallelGaLoreFira, EqualsOneProcessOnTheSameGlobalBatchWithAndWithoutZero) {
  if (world()->size() % 2 != 0) GTEST_SKIP();
  for (int zero : {0, 1})
    for (const TpCase& c : kTpProjected) {
      SCOPED_TRACE(c.name + std::string(" zero_stage ") + std::to_string(zero));
      expect_tp_equals_reference(c, zero);
    }
}

TEST(TensorParallelGaLoreFira, ResumeIsBitExactWithAndWithoutZero) {
  if (world()->size() % 2 != 0) GTEST_SKIP();
  for (int zero : {0, 1})
    for (const TpCase& c : kTpProjected) {
      SCOPED_TRACE(c.name + std::string(" zero_stage ") + std::to_string(zero));
      expect_tp_resume_bit_exact(c, zero);
    }
}

// Optimizer-state bytes (MemCategory::optimizer_state) of GaLore under dp2 x tp2: plain TP
// holds the whole matrices' state on every rank; ZeRO-1 divides it over the data-parallel
// group, each matrix's state on exactly one rank of it (the sum over the group is plain TP's,
// the largest share at most half of it plus one tensor's state).
TEST(TensorParallelGaLoreFira, ZeroOptimizerStateBytesFallWithDataParallel) {
  auto comm = world();
  if (comm->size() != 4) GTEST_SKIP() << "needs dp 2 x tp 2";
  SharedDir dir(*comm);
  const TpCase& c = kTpProjected[0];
  int64_t max_single = 0;
  auto measure = [&](int zero) {
    return optimizer_state_after(tp_config(dir / ("state" + std::to_string(zero)), c, zero, 2, 4, 2),
                                 zero == 0 ? &max_single : nullptr);
  };
  const int64_t plain = measure(0), zero = measure(1);
  ASSERT_GT(plain, 0);
  Tensor sum = Tensor::from_vector<int64_t>({zero}, {1});
  comm->split(comm->rank() % 2, comm->rank())->all_reduce(sum, parallel::ReduceOp::sum);  // over the DP group
  Tensor mx = Tensor::from_vector<int64_t>({zero}, {1});
  comm->all_reduce(mx, parallel::ReduceOp::max);
  const int64_t largest = mx.to_vector<int64_t>()[0];
  if (comm->rank() == 0)
    std::printf("[zero memory] GaLore dp 2 x tp 2: optimizer state per rank plain TP %lld B, ZeRO-1 at most %lld B "
                "(%.3f of plain)\n",
                static_cast<long long>(plain), static_cast<long long>(largest),
                static_cast<double>(largest) / static_cast<double>(plain));
  EXPECT_EQ(sum.to_vector<int64_t>()[0], plain);
  EXPECT_LE(largest, plain / 2 + max_single);
  EXPECT_LT(largest, plain);
}

TEST_P(ZeroTensorParallel, ResumeIsBitExact) {
  auto comm = world();
  if (comm->size() % 2 != 0) GTEST_SKIP();
  const TpCase& c = GetParam();
  expect_tp_resume_bit_exact(c, 1);
  SharedDir dir(*comm);
  train(tp_config(dir / "stopped", c, 1, 2, 4, 2), opts());
  TrainOptions resume = opts();
  resume.resume = "latest";
  // The same checkpoint under plain TP (zero_stage 0) is refused, naming both layouts.
  try {
    train(tp_config(dir / "stopped", c, 0, 2, 4, 6), resume);
    ADD_FAILURE() << "a ZeRO + TP checkpoint was resumed with zero_stage 0";
  } catch (const CheckpointError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("ZeRO-1 over " + std::to_string(comm->size() / 2)), std::string::npos) << m;
    EXPECT_NE(m.find("plain data parallelism"), std::string::npos) << m;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, ZeroTensorParallel, ::testing::ValuesIn(kTpCases),
                         [](const ::testing::TestParamInfo<TpCase>& info) { return info.param.name; });

// Layer-wise updates under TP = 2 (optimizer.layerwise, train/layerwise.h), SGD: the same
// weights and losses as the ordinary TP step, bit for bit (np 2: each shard stepped from its
// hook; np 4, dp2 x tp2: from the bucket reducer's hand-over), and as layer-wise updates in one
// process on the same global batch (f32 tolerance). The Ladder residual's row-parallel biases
// and Megatron-SP's norm weights have gradients that are partial sums over TP: stepped in
// finish(), after ParallelLayout::finish_gradients sums them.
struct LayerwiseTpCase {
  std::string name;
  std::string model;
  bool megatron_sp = false;
  bool deferred = false;  // some parameters have partial-sum gradients
};
void PrintTo(const LayerwiseTpCase& c, std::ostream* os) { *os << c.name; }
const std::vector<LayerwiseTpCase> kLayerwiseTp = {
    {"Gpt2", "arch: GPT2 n_layer: 2 n_head: 2 d_model: 32 max_seq_len: 32 dropout: 0.1"},
    {"Gpt2Ladder", "arch: GPT2 n_layer: 2 n_head: 2 d_model: 32 max_seq_len: 32 ladder_residual: true", false, true},
    {"LlamaGqaMegatronSp", "arch: LLAMA n_layer: 2 n_head: 4 n_kv_head: 2 d_model: 32 max_seq_len: 32", true, true},
};

RunConfig layerwise_tp_config(const std::string& run_dir, const LayerwiseTpCase& c, int tp, int micro_batch,
                              bool layerwise, bool dropout) {
  // SGD with momentum: its update is linear in the gradient, so a partial sum stepped before
  // its TP reduction shows (AdamW's normalised update would nearly hide a factor).
  RunConfig cfg = tp_config(run_dir, TpCase{c.name, c.model, kOptimizers[2].fields}, 0, tp, micro_batch);
  cfg.mutable_train()->set_grad_clip(0);  // layer-wise updates never hold every gradient
  cfg.mutable_optimizer()->set_layerwise(layerwise);
  if (!dropout) cfg.mutable_model()->set_dropout(0);
  if (c.megatron_sp && tp > 1) {
    cfg.mutable_parallel()->set_sequence_parallel(tp);
    cfg.mutable_parallel()->set_sequence_parallel_mode(ParallelConfig::MEGATRON);
  }
  return cfg;
}

class TensorParallelLayerwise : public ::testing::TestWithParam<LayerwiseTpCase> {};

TEST_P(TensorParallelLayerwise, EqualsTheOrdinaryStepAndOneProcess) {
  auto comm = world();
  if (comm->size() % 2 != 0) GTEST_SKIP();
  const LayerwiseTpCase& c = GetParam();
  SharedDir dir(*comm);
  const int tp = 2, dp = comm->size() / tp, tp_rank = comm->rank() % tp;
  // Each DP rank draws its own dropout masks: dropout only where dp is 1.
  const bool dropout = dp == 1;
  Trainer one(layerwise_tp_config(dir / ("one" + std::to_string(comm->rank())), c, 1, 4 * dp, true, dropout),
              opts(std::make_shared<parallel::SingleProcessCommunicator>()));
  const TrainResult a = one.run();
  Trainer ordinary(layerwise_tp_config(dir / "ordinary", c, tp, 4, false, dropout), opts());
  const TrainResult b = ordinary.run();
  Trainer lw(layerwise_tp_config(dir / "layerwise", c, tp, 4, true, dropout), opts());
  const TrainResult l = lw.run();
  ASSERT_EQ(a.steps.size(), 4u);
  ASSERT_EQ(b.steps.size(), 4u);
  ASSERT_EQ(l.steps.size(), 4u);
  ASSERT_NE(lw.layerwise(), nullptr);
  EXPECT_GT(lw.layerwise()->updated_before_finish(), 0);  // stepped during backward
  if (c.deferred) {
    EXPECT_GT(lw.layerwise()->updated_in_finish(), 0);  // the partial sums, after it
  }
  for (size_t i = 0; i < l.steps.size(); ++i) {
    SCOPED_TRACE("step " + std::to_string(i + 1));
    EXPECT_EQ(l.steps[i].loss, b.steps[i].loss);
    EXPECT_NEAR(l.steps[i].grad_norm, b.steps[i].grad_norm, 1e-5 * b.steps[i].grad_norm);
    EXPECT_NEAR(l.steps[i].loss, a.steps[i].loss, 1e-5 * std::abs(a.steps[i].loss));
    EXPECT_NEAR(l.steps[i].grad_norm, a.steps[i].grad_norm, 1e-5 * a.steps[i].grad_norm);
  }
  bool bitwise = false;
  const double diff = max_param_diff(lw.model(), ordinary.model(), &bitwise);
  EXPECT_TRUE(bitwise) << "max |layer-wise - ordinary| = " << diff;
  expect_params_near(lw.model(), one.model(), tp, tp_rank);
}

INSTANTIATE_TEST_SUITE_P(Models, TensorParallelLayerwise, ::testing::ValuesIn(kLayerwiseTp),
                         [](const ::testing::TestParamInfo<LayerwiseTpCase>& info) { return info.param.name; });

// Stopped after step 2 and resumed: every rank's final checkpoint (weights, its optimizer-state
// shard, data position, RNG) equals that of a run that never stopped, bit for bit.
TEST(Zero, ResumeIsBitExact) {
  auto comm = world();
  SharedDir dir(*comm);
  for (const auto& oc : {kOptimizers[0], kOptimizers[5]}) {
    SCOPED_TRACE(oc.name);
    const std::string a_dir = dir / (oc.name + "_straight"), b_dir = dir / (oc.name + "_stopped");
    train(config(a_dir, oc.fields, 1, 2), opts());
    TrainOptions stop = opts();
    stop.stop_after = 2;
    ASSERT_EQ(train(config(b_dir, oc.fields, 1, 2), stop).end_step, 2);
    TrainOptions resume = opts();
    resume.resume = "latest";
    const TrainResult b = train(config(b_dir, oc.fields, 1, 2), resume);
    ASSERT_EQ(b.start_step, 2);
    ASSERT_TRUE(b.finished);
    const int r = comm->rank();
    test_util::expect_same_tensors(rank_file(step_dir(a_dir + "/checkpoints", 4), r),
                                   rank_file(step_dir(b_dir + "/checkpoints", 4), r));
    // The file holds this rank's shard only.
    H5Reader f(rank_file(step_dir(b_dir + "/checkpoints", 4), r));
    EXPECT_NE(f.attr_string("/", "optimizer_layout").find("ZeRO-1 over " + std::to_string(comm->size())),
              std::string::npos);
  }
}

// A checkpoint of another layout is refused with both layouts named.
TEST(Zero, ResumeUnderAnotherLayoutIsRefused) {
  auto comm = world();
  SharedDir dir(*comm);
  const std::string fields = kOptimizers[0].fields;
  train(config(dir / "plain", fields, 0, 1, 0, 2), opts());
  TrainOptions resume = opts();
  resume.resume = "latest";
  try {
    train(config(dir / "plain", fields, 1, 1, 0, 4), resume);
    ADD_FAILURE() << "a plain data-parallel checkpoint was resumed with zero_stage 1";
  } catch (const CheckpointError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("plain data parallelism"), std::string::npos) << m;
    EXPECT_NE(m.find("ZeRO-1 over " + std::to_string(comm->size())), std::string::npos) << m;
  }
  // Another data-parallel size: ranks 0 and 1 write a ZeRO checkpoint, every rank resumes it.
  if (comm->size() < 4) return;
  auto pair = comm->split(comm->rank() < 2 ? 0 : -1, comm->rank());
  if (pair) train(config(dir / "dp2", fields, 1, 1, 0, 2), opts(pair));
  comm->barrier();
  try {
    train(config(dir / "dp2", fields, 1, 1, 0, 4), resume);
    ADD_FAILURE() << "a ZeRO checkpoint of 2 ranks was resumed on 4";
  } catch (const CheckpointError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("ZeRO-1 over 2 data-parallel"), std::string::npos) << m;
    EXPECT_NE(m.find("ZeRO-1 over 4 data-parallel"), std::string::npos) << m;
  }
}

// Optimizer-state bytes per rank (the allocator's MemCategory::optimizer_state) are about 1/dp
// of plain data parallelism's: exactly their share for the flat partition, the per-parameter
// bin packing's share otherwise.
TEST(Zero, OptimizerStateBytesPerRank) {
  auto comm = world();
  SharedDir dir(*comm);
  const int dp = comm->size();
  for (const auto& oc : {kOptimizers[0], kOptimizers[5]}) {
    SCOPED_TRACE(oc.name);
    int64_t max_single = 0;  // the largest one parameter's state (plain DP)
    auto measure = [&](int zero) {
      return optimizer_state_after(config(dir / (oc.name + std::to_string(zero)), oc.fields, zero, 1, 0, 2),
                                   zero == 0 ? &max_single : nullptr);
    };
    const int64_t plain = measure(0), zero = measure(1);
    ASSERT_GT(plain, 0);
    Tensor v = Tensor::from_vector<int64_t>({zero, zero, -zero}, {3});
    Tensor sum = v.narrow(0, 0, 1).clone(), mx = v.narrow(0, 1, 2).clone();
    comm->all_reduce(sum, parallel::ReduceOp::sum);
    comm->all_reduce(mx, parallel::ReduceOp::max);
    const int64_t total = sum.to_vector<int64_t>()[0], largest = mx.to_vector<int64_t>()[0],
                  smallest = -mx.to_vector<int64_t>()[1];
    if (comm->rank() == 0)
      std::printf("[zero memory] %s dp %d: optimizer state per rank plain %lld B, ZeRO-1 %lld..%lld B (%.3f of plain)\n",
                  oc.name.c_str(), dp, static_cast<long long>(plain), static_cast<long long>(smallest),
                  static_cast<long long>(largest), static_cast<double>(largest) / static_cast<double>(plain));
    if (oc.partition == parallel::ZeroPartition::flat) {
      // The shards partition the state: their sum is plain DP's, the largest is one 1/dp share.
      EXPECT_EQ(total, plain);
      EXPECT_LE(largest, plain / dp + 64);
    } else {
      // Whole tensors: every tensor's state lives on exactly one rank, and the greedy packing
      // keeps the largest shard within one 1/dp share plus one tensor's state.
      EXPECT_EQ(total, plain);
      EXPECT_LE(largest, plain / dp + max_single);
      EXPECT_LT(largest, plain);
    }
  }
}

TEST(Zero, LayoutArithmetic) {
  // Flat: the concatenation cut into equal ranges, the last one short.
  const auto flat = parallel::plan_zero_layout({5, 3, 4}, 3, parallel::ZeroPartition::flat);
  EXPECT_EQ(flat.shard_numel, 4);
  ASSERT_EQ(flat.ranks[0].size(), 1u);  // [0, 4) of param 0
  EXPECT_EQ(flat.ranks[0][0].numel, 4);
  ASSERT_EQ(flat.ranks[1].size(), 2u);  // element 4 of param 0, [0, 3) of param 1
  EXPECT_EQ(flat.ranks[1][0].offset, 4);
  EXPECT_EQ(flat.ranks[1][1].packed, 1);
  EXPECT_EQ(flat.ranks[2][0].param, 2u);
  EXPECT_EQ(flat.owned_numel(2), 4);
  // Per parameter: largest first onto the least loaded rank.
  const auto per = parallel::plan_zero_layout({5, 3, 4, 1}, 2, parallel::ZeroPartition::per_parameter);
  ASSERT_EQ(per.ranks[0].size(), 2u);  // 5, then 1
  EXPECT_EQ(per.ranks[0][1].param, 3u);
  EXPECT_EQ(per.ranks[0][1].packed, 5);
  EXPECT_EQ(per.owned_numel(1), 7);  // 4 and 3
  EXPECT_EQ(per.shard_numel, 7);
}

TEST(Zero, ConfigErrors) {
  auto comm = world();
  SharedDir dir(*comm);
  try {
    train(config(dir / "r", kOptimizers[0].fields, 2), opts());
    ADD_FAILURE() << "zero_stage 2 was accepted";
  } catch (const configs::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("parallel.zero_stage"), std::string::npos) << e.what();
  }
  try {
    train(config(dir / "r", kOptimizers[0].fields + " layerwise: true", 1), opts());
    ADD_FAILURE() << "zero_stage 1 with optimizer.layerwise was accepted";
  } catch (const configs::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("optimizer.layerwise"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lathe::train
