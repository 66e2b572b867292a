// Tensor parallelism composed with LoRA adapters (parallel/tp_lora.h) through the whole
// trainer, under mpirun (ctest runs -np 2 and -np 4): TP = 2 (and TP = 4 at np 4, on a Llama
// whose heads divide by 4) with LoRA on every linear layer equals one process on the same
// global batch (losses, the clipped global norm, every rank's slice of every parameter, the
// replicated factors bit-identical over the TP ranks); the adapter a TP run exports (at the
// end of training and with lathe export from its checkpoint, also merged) equals the
// one-process one; resume is bit-exact; the methods that do not shard are refused by name.
// Methods: LoRA (rsLoRA, dropout, bias modes), LoRA-XS, LoRA-SB (gradient init), SoRA, NOLA; with
// Megatron-SP, the Ladder residual and ZeRO-1 as well.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "configs/config.h"
#include "models/hf_export.h"
#include "models/model.h"
#include "models/safetensors.h"
#include "parallel/single_process_communicator.h"
#include "parallel/tensor_parallel.h"
#include "peft/adapter_io.h"
#include "peft/inject.h"
#include "tests/parallel/shared_dir.h"
#include "tests/train/trainer_test_util.h"
#include "train/checkpoint_dir.h"
#include "train/inference.h"
#include "train/peft_setup.h"
#include "train/trainer.h"

namespace lathe::train {
namespace {

namespace fs = std::filesystem;
using parallel::Communicator;

std::shared_ptr<Communicator> world() { return parallel::world(); }
std::shared_ptr<Communicator> single() { return std::make_shared<parallel::SingleProcessCommunicator>(); }

using test::SharedDir;

TrainOptions opts(std::shared_ptr<Communicator> comm) {
  TrainOptions o;
  o.out = nullptr;
  o.comm = std::move(comm);
  return o;
}

struct Case {
  std::string name;
  models::ModelSpec spec;  // the pretrained base (vocab 256, byte tokenizer)
  std::string model;       // the config's model fields besides init_from
  std::string peft;        // the peft section
  int tp = 2;
  double clip = 0.05;  // acts in every step (LoRA-XS trains only R: small gradients)
  std::string parallel;  // more fields of the TP run's parallel section
  // Layer-wise updates with SGD + momentum (linear in the gradient, so a replicated factor's
  // partial TP sum stepped before its reduction would show); no clipping (layer-wise needs 0).
  bool layerwise = false;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

models::ModelSpec gpt2_spec() { return test_util::tiny_hf_gpt2_spec(); }
models::ModelSpec llama_spec(int64_t heads, int64_t kv) {
  models::ModelSpec s;
  s.arch = models::Arch::llama;
  s.vocab_size = 256;
  s.n_layer = 2;
  s.n_head = heads;
  s.n_kv_head = kv;
  s.d_model = 32;
  s.d_ff = 64;
  s.max_seq_len = 32;
  return s;
}

const char* kAllLinear = "target_modules: \"all-linear\" ";
const std::vector<Case> kCases = {
    // GPT-2: dropout in the model and on the adapter input, trainable biases (column biases
    // sliced, row biases added once before g), rsLoRA.
    {"Gpt2LoraDropoutBiasRslora", gpt2_spec(), "dropout: 0.1",
     std::string("peft { method: LORA r: 4 lora_alpha: 8 lora_dropout: 0.2 use_rslora: true bias: ALL ") + kAllLinear +
         "}"},
    {"LlamaGqaLora", llama_spec(4, 2), "", std::string("peft { method: LORA r: 4 lora_alpha: 16 ") + kAllLinear + "}"},
    // LoRA-XS: only R trains; its init (the weight SVD) is computed on the full weight.
    {"LlamaGqaLoraXs", llama_spec(4, 2), "",
     std::string("peft { method: LORA_SB sb_init: WEIGHT_SVD r: 4 ") + kAllLinear + "}", 2, 0.003},
    // LoRA-SB: its init from the first batches' gradients, gathered whole over TP.
    {"Gpt2LoraSbGradientInit", gpt2_spec(), "dropout: 0.1",
     std::string("peft { method: LORA_SB sb_init: GRADIENT sb_init_batches: 2 r: 4 ") + kAllLinear + "}", 2, 0.003},
    // SoRA: the gate replicated, its proximal step (paper threshold) on every rank alike.
    {"Gpt2Sora", gpt2_spec(), "dropout: 0.1",
     std::string("peft { method: SORA r: 4 lora_alpha: 8 sora_lambda: 5 ") + kAllLinear + "}"},
    // NOLA: the coefficients whole, the bases those of the whole matrices, sliced.
    {"LlamaGqaNola", llama_spec(4, 2), "",
     std::string("peft { method: NOLA r: 4 lora_alpha: 8 nola_num_basis_a: 16 nola_num_basis_b: 16 nola_chunk: 5 ") +
         kAllLinear + "}", 2, 0.001},
    // TP = 4: 8 query heads over 4 KV heads.
    {"LlamaGqaLoraTp4", llama_spec(8, 4), "",
     std::string("peft { method: LORA r: 4 lora_alpha: 8 lora_dropout: 0.1 ") + kAllLinear + "}", 4},
    // Megatron-SP inside the TP group: the regions gather / reduce-scatter the sequence.
    {"Gpt2LoraMegatronSp", gpt2_spec(), "dropout: 0.1",
     std::string("peft { method: LORA r: 4 lora_alpha: 8 lora_dropout: 0.2 bias: LORA_ONLY ") + kAllLinear + "}", 2,
     0.05, "sequence_parallel: 2 sequence_parallel_mode: MEGATRON"},
    // The Ladder residual: the row-parallel partial sums (base + adapter) reduced one module later.
    {"LlamaGqaLoraLadder", llama_spec(4, 2), "ladder_residual: true",
     std::string("peft { method: LORA r: 4 lora_alpha: 8 lora_dropout: 0.1 bias: ALL ") + kAllLinear + "}"},
    // Layer-wise updates: the replicated factors (partial sums over TP) wait for their reduction
    // (train/layerwise.h defers TensorParallelShards::partial_grad), the sliced ones step in their hook.
    {"Gpt2LoraLayerwise", gpt2_spec(), "dropout: 0.1",
     std::string("peft { method: LORA r: 4 lora_alpha: 8 lora_dropout: 0.2 bias: ALL ") + kAllLinear + "}", 2, 0, "",
     true},
};

// Writes the case's base (rank 0) and returns its directory.
std::string write_base(const Case& c, const SharedDir& dir, Communicator& comm) {
  const std::string base = dir / ("base_" + c.name);
  if (comm.rank() == 0) models::save_hf_model(*models::build_model(c.spec, 77), base);
  comm.barrier();
  return base;
}

RunConfig config(const std::string& run_dir, const Case& c, const std::string& base, int tp, int micro_batch,
                 int steps = 4, int zero = 0) {
  char clip[32];
  std::snprintf(clip, sizeof clip, "%g", c.clip);
  std::string t = test_util::tiny_config_text(run_dir, steps);
  const std::string from = "model { arch: GPT2 n_layer: 2 n_head: 2 d_model: 32 max_seq_len: 32 dropout: 0.1 }";
  t.replace(t.find(from), from.size(), "model { init_from: \"" + base + "\" " + c.model + " }");
  t.replace(t.find("data {"), 6, "data { tokenizer: \"byte\"");
  t.replace(t.find("optimizer { lr: 3e-3"), 20, "optimizer { lr: 1e-2");
  t.replace(t.find("micro_batch: 4"), 14, "micro_batch: " + std::to_string(micro_batch));
  t.replace(t.find("eval_interval: 4"), 16, "eval_interval: 0 grad_clip: " + std::string(clip));
  t.replace(t.find("checkpoint { interval: 4"), 24, "checkpoint { interval: " + std::to_string(steps / 2));
  t.replace(t.find("threads_per_rank: 1"), 19,
            "threads_per_rank: 1 collective_timeout_s: 30 vocab_pad_multiple: 100 tensor_parallel: " +
                std::to_string(tp) + " zero_stage: " + std::to_string(zero) + (tp > 1 ? " " + c.parallel : ""));
  RunConfig cfg = configs::parse_text(t + c.peft + "\n", "tp lora test");
  if (c.layerwise) {
    cfg.mutable_optimizer()->set_layerwise(true);
    cfg.mutable_optimizer()->set_type(OptimizerConfig::SGD);
    cfg.mutable_optimizer()->set_lr(0.5);
    cfg.mutable_optimizer()->set_sgd_momentum(0.9);
  }
  return cfg;
}

// Max over elements of |a - b| - (atol + rtol |a|): <= 0 when a and b agree.
double excess(const Tensor& a, const Tensor& b, double atol = 1e-5, double rtol = 1e-4) {
  const auto x = a.contiguous().to(DType::f64).to_vector<double>(), y = b.contiguous().to(DType::f64).to_vector<double>();
  EXPECT_EQ(x.size(), y.size());
  double worst = -1;
  for (size_t i = 0; i < std::min(x.size(), y.size()); ++i)
    worst = std::max(worst, std::abs(x[i] - y[i]) - (atol + rtol * std::abs(x[i])));
  return worst;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  Tensor x = a.contiguous(), y = b.contiguous();
  return x.shape() == y.shape() && std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

int64_t trainable_numel(const models::CausalLM& m) {
  int64_t n = 0;
  for (const auto& [name, p] : m.named_parameters())
    if (p.requires_grad()) n += p.numel();
  return n;
}

// The TP run against one process on the same global batch (micro-batch 4 x dp).
void expect_tp_equals_one_process(const Case& c, int zero) {
  auto comm = world();
  const int tp = c.tp;
  if (comm->size() % tp != 0) GTEST_SKIP() << "np " << comm->size() << " is not a multiple of tp " << tp;
  SharedDir dir(*comm);
  const std::string base = write_base(c, dir, *comm);
  const int dp = comm->size() / tp, tp_rank = comm->rank() % tp;
  RunConfig ref = config(dir / ("one" + std::to_string(comm->rank())), c, base, 1, 4 * dp);
  RunConfig run = config(dir / "tp", c, base, tp, 4, 4, zero);
  // Each data-parallel rank draws its own dropout stream, so the masks of one process on the
  // whole batch are another draw: dropout only where dp is 1.
  if (dp > 1) {
    for (RunConfig* r : {&ref, &run}) {
      r->mutable_model()->set_dropout(0);
      r->mutable_peft()->set_lora_dropout(0);
    }
  }
  Trainer one(ref, opts(single()));
  const TrainResult a = one.run();
  Trainer tpr(run, opts(comm));
  const TrainResult b = tpr.run();
  test_util::expect_same_curve(a, b, 4);
  for (const auto& st : a.steps) EXPECT_GT(st.grad_norm, c.clip);  // clipping acted: the norm must be the whole model's
  EXPECT_GT(a.steps.back().loss, 0);
  // Every parameter (frozen base and adapters) is this rank's slice of the one-process one,
  // and the adapters moved away from their init.
  std::shared_ptr<Communicator> tpc = comm->split(comm->rank() / tp, tp_rank);
  int adapters = 0;
  int64_t zero_gates = 0;
  for (const auto& [n, p] : tpr.model().named_parameters()) {
    if (n.find("lora_gate") != std::string::npos)
      for (double g : p.to(DType::f64).to_vector<double>()) zero_gates += g == 0.0;
    SCOPED_TRACE(n);
    const Tensor full = one.model().parameter(n);
    EXPECT_EQ(full.requires_grad(), p.requires_grad());
    const Tensor want = parallel::slice_shard(n, full, one.model().spec(), tp, tp_rank, 100);
    ASSERT_EQ(want.shape(), p.shape());
    EXPECT_LE(excess(want, p), 0.0);
    if (n.find("lora_") == std::string::npos && n.find("nola_") == std::string::npos) continue;
    ++adapters;
    // A replicated factor is the same bits on every TP rank (its gradient was summed).
    if (parallel::shard_dim(n, one.model().spec()) < 0) {
      Tensor mine = p.contiguous().clone(), first = p.contiguous().clone();
      tpc->broadcast(first, 0);
      EXPECT_TRUE(same_bits(mine, first)) << "differs from TP rank 0";
    }
  }
  EXPECT_GT(adapters, 12);
  // SoRA's proximal step reached exact zeros (the same ones as one process, compared above).
  if (c.name.find("Sora") != std::string::npos) EXPECT_GT(zero_gates, 0);
  // The sharded factors are a 1/tp share: the trainable elements add up over TP to no more
  // than one process's (replicated ones counted on every rank).
  EXPECT_LT(trainable_numel(tpr.model()), trainable_numel(one.model()) + 1);
}

class TpLora : public ::testing::TestWithParam<Case> {};

TEST_P(TpLora, EqualsOneProcessOnTheSameGlobalBatch) { expect_tp_equals_one_process(GetParam(), 0); }

INSTANTIATE_TEST_SUITE_P(Models, TpLora, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

// ZeRO-1 over the data-parallel group on top (np 4: dp 2 x tp 2): the adapters' optimizer
// state sharded, the same result.
TEST(TpLoraZero, EqualsOneProcessOnTheSameGlobalBatch) {
  if (world()->size() < 4) GTEST_SKIP() << "ZeRO needs a data-parallel group: np 4";
  expect_tp_equals_one_process(kCases[1], 1);
}

// The adapter (peft layout) that a TP run writes at the end, and lathe export's --adapter-only
// and --merge from its checkpoint, equal those of one process: same keys, same values.
const Case& case_named(const std::string& name) {
  for (const Case& c : kCases)
    if (c.name == name) return c;
  throw std::runtime_error("no case " + name);
}

void expect_export_equals_one_process(const Case& c) {
  auto comm = world();
  SharedDir dir(*comm);
  const std::string base = write_base(c, dir, *comm);
  const int tp = 2, dp = comm->size() / tp;
  RunConfig ref = config(dir / ("one" + std::to_string(comm->rank())), c, base, 1, 4 * dp);
  RunConfig run = config(dir / "tp", c, base, tp, 4);
  for (RunConfig* r : {&ref, &run}) {
    r->mutable_model()->set_dropout(0);
    r->mutable_peft()->set_lora_dropout(0);
  }
  train(ref, opts(single()));
  const TrainResult b = train(run, opts(comm));
  comm->barrier();
  if (comm->rank() != 0) return;
  ASSERT_FALSE(b.adapter_dir.empty());
  auto expect_same_file = [](const std::string& want_path, const std::string& got_path) {
    models::SafetensorsFile want(want_path), got(got_path);
    ASSERT_EQ(want.names(), got.names()) << got_path;
    EXPECT_GT(want.size(), 8u);
    for (const std::string& n : want.names()) {
      SCOPED_TRACE(n);
      ASSERT_EQ(want.get(n).shape(), got.get(n).shape());
      EXPECT_LE(excess(want.get(n), got.get(n)), 0.0);
    }
  };
  const std::string one_dir = dir / "one0/adapter";
  expect_same_file(one_dir + "/adapter_model.safetensors", b.adapter_dir + "/adapter_model.safetensors");
  // lathe export --adapter-only (and --merge) of the TP checkpoint, in one process.
  LoadedRun r = load_trained(dir / "tp", {}, single());
  ASSERT_TRUE(r.peft);
  const std::string out = dir / "exported";
  peft::save_adapter(*r.model, out, peft::save_options(peft_options(r.cfg), *r.peft, r.cfg.model().init_from()));
  expect_same_file(one_dir + "/adapter_model.safetensors", out + "/adapter_model.safetensors");
  LoadedRun o = load_trained(dir / "one0", {}, single());
  peft::unload_adapters(*r.model, /*merge=*/true);
  peft::unload_adapters(*o.model, /*merge=*/true);
  int compared = 0;
  for (const auto& [n, p] : o.model->named_parameters()) {
    SCOPED_TRACE(n);
    EXPECT_LE(excess(p, r.model->parameter(n)), 0.0);
    ++compared;
  }
  EXPECT_GT(compared, 10);
}

TEST(TpLoraExport, EqualsOneProcessExport) {
  for (const char* name : {"Gpt2LoraDropoutBiasRslora", "Gpt2LoraSbGradientInit", "LlamaGqaNola"}) {
    SCOPED_TRACE(name);
    expect_export_equals_one_process(case_named(name));
  }
}

// Stopped after step 2 and resumed: every rank's files (its adapter shards, their optimizer
// state, data position, RNG) equal those of a run that never stopped, bit for bit.
void expect_resume_bit_exact(const Case& c) {
  auto comm = world();
  SharedDir dir(*comm);
  const std::string base = write_base(c, dir, *comm);
  const int r = comm->rank();
  test_util::expect_resume_bit_exact([&](const std::string& d) { return config(d, c, base, 2, 4); },
                                     dir / "straight", dir / "stopped", opts(comm), 2, 4, r);
  // The same checkpoint under another tensor-parallel degree is refused, naming both layouts.
  comm->barrier();
  TrainOptions resume = opts(comm);
  resume.resume = "latest";
  const std::string tp2 = "dp" + std::to_string(comm->size() / 2) + " x tp2", tp1 = "dp" + std::to_string(comm->size()) + " x tp1";
  try {
    train(config(dir / "stopped", c, base, 1, 4, 6), resume);
    ADD_FAILURE() << "a TP 2 adapter checkpoint was resumed under TP 1";
  } catch (const CheckpointError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(tp2), std::string::npos) << m;
    EXPECT_NE(m.find(tp1), std::string::npos) << m;
  }
}

// LoRA-SB also checkpoints its frozen A and B slices (computed from data).
TEST(TpLoraResume, IsBitExact) {
  for (const char* name : {"Gpt2LoraDropoutBiasRslora", "Gpt2LoraSbGradientInit"}) {
    SCOPED_TRACE(name);
    expect_resume_bit_exact(case_named(name));
  }
}

// The methods that do not shard are refused by name, before any work.
TEST(TpLoraConfig, UnshardableMethodsAreRefused) {
  auto issues_of = [](const std::string& peft, const std::string& extra = "") {
    RunConfig cfg = configs::parse_text(test_util::tiny_config_text("/tmp/unused", 4) + peft + "\n" + extra, "t");
    cfg.mutable_parallel()->set_tensor_parallel(2);
    std::string all;
    for (const auto& i : configs::validate(cfg)) all += i + "\n";
    return all;
  };
  EXPECT_EQ(issues_of("peft { method: LORA r: 4 }"), "");
  EXPECT_EQ(issues_of("peft { method: LORA_SB sb_init: WEIGHT_SVD r: 4 }"), "");
  EXPECT_EQ(issues_of("peft { method: LORA_SB r: 4 }"), "");
  EXPECT_EQ(issues_of("peft { method: SORA r: 4 }"), "");
  EXPECT_EQ(issues_of("peft { method: NOLA r: 4 }"), "");
  std::string m = issues_of("peft { method: SPIEL spiel_budget: 100 }");
  EXPECT_NE(m.find("peft.method: SPIEL is not supported under tensor_parallel 2"), std::string::npos) << m;
}

// Counts the collectives that pass through it (the TP group of the test below).
class CountingComm final : public Communicator {
 public:
  explicit CountingComm(std::shared_ptr<Communicator> c) : c_(std::move(c)) {}
  int rank() const override { return c_->rank(); }
  int size() const override { return c_->size(); }
  std::string backend() const override { return c_->backend(); }
  parallel::WorkPtr all_reduce_async(const Tensor& t, parallel::ReduceOp op) override {
    ++all_reduces;
    elements += t.numel();
    return c_->all_reduce_async(t, op);
  }
  parallel::WorkPtr reduce_scatter_async(const Tensor& in, const Tensor& out, parallel::ReduceOp op) override {
    ++others;
    return c_->reduce_scatter_async(in, out, op);
  }
  parallel::WorkPtr all_gather_async(const Tensor& in, const Tensor& out) override {
    ++others;
    return c_->all_gather_async(in, out);
  }
  parallel::WorkPtr all_to_all_async(const Tensor& in, const Tensor& out) override {
    ++others;
    return c_->all_to_all_async(in, out);
  }
  parallel::WorkPtr broadcast_async(const Tensor& t, int root) override {
    ++others;
    return c_->broadcast_async(t, root);
  }
  parallel::WorkPtr send_async(const Tensor& t, int dst, int tag) override { return c_->send_async(t, dst, tag); }
  parallel::WorkPtr recv_async(const Tensor& t, int src, int tag) override { return c_->recv_async(t, src, tag); }
  parallel::WorkPtr barrier_async() override { return c_->barrier_async(); }
  std::shared_ptr<Communicator> split(int color, int key) override { return c_->split(color, key); }
  int64_t all_reduces = 0, elements = 0, others = 0;

 private:
  std::shared_ptr<Communicator> c_;
};

// The design's claim (parallel/tp_lora.h): LoRA on every linear layer adds no collective to a
// TP forward and backward (the same all-reduces of the same sizes as the model without
// adapters), and the replicated factors' partial gradients are one all-reduce each per step.
TEST(TpLoraCommunication, AdaptersAddNoCollectiveToForwardAndBackward) {
  auto comm = world();
  if (comm->size() != 2) GTEST_SKIP() << "TP = 2 over the whole world: np 2";
  const models::ModelSpec spec = llama_spec(4, 2);
  const Tensor ids = Tensor::from_vector<int64_t>({3, 70, 101, 32, 9, 200, 44, 12}, {2, 4});
  const Tensor targets = Tensor::from_vector<int64_t>({70, 101, 32, 9, 200, 44, 12, 5}, {2, 4});
  auto step = [&](bool lora, int64_t* partial_grads) {
    auto counting = std::make_shared<CountingComm>(comm);
    auto model = models::build_model(spec, 5);
    if (lora) {
      peft::PeftOptions o;
      o.target.names = {"all-linear"};
      o.lora.r = 4;
      peft::inject_lora(*model, o);
      // Trainable like the plain model's, so backward reaches the first layer's input (a
      // frozen embedding would skip those input gradients and their all-reduces).
      model->unfreeze("embed\\.weight");
    }
    const parallel::TensorParallelShards shards = parallel::shard_for_tensor_parallel(*model, counting, 1);
    *partial_grads = static_cast<int64_t>(shards.partial_grad.size());
    model->loss(ids, targets).backward();
    return counting;
  };
  int64_t partial_plain = 0, partial_lora = 0;
  const auto plain = step(false, &partial_plain);
  const auto lora = step(true, &partial_lora);
  EXPECT_GT(plain->all_reduces, 8);
  EXPECT_EQ(lora->all_reduces, plain->all_reduces);
  EXPECT_EQ(lora->elements, plain->elements);
  EXPECT_EQ(lora->others, plain->others);
  // Per step: A of the 5 column layers (q, k, v, gate, up) and B of the 2 row layers (o, down)
  // of each of the 2 layers.
  EXPECT_EQ(partial_plain, 0);
  EXPECT_EQ(partial_lora, 2 * 7);
}

// An adapter on the vocabulary head (its rows are padded and sharded) is a config error
// naming the field and the layer, before any step.
TEST(TpLoraConfig, AdapterOnTheHeadIsRefused) {
  auto comm = world();
  if (comm->size() % 2 != 0) GTEST_SKIP();
  Case c = case_named("LlamaGqaLora");
  c.name = "LlamaUntiedHead";
  c.spec.tie_embeddings = false;
  c.peft = "peft { method: LORA r: 4 target_modules: \"lm_head\" }";
  SharedDir dir(*comm);
  const std::string base = write_base(c, dir, *comm);
  try {
    Trainer t(config(dir / "head", c, base, 2, 4), opts(comm));
    t.run();
    ADD_FAILURE() << "an adapter on lm_head was sharded";
  } catch (const configs::ConfigError& e) {
    std::string m;
    for (const std::string& line : e.errors()) m += line + "\n";
    EXPECT_NE(m.find("peft.target_modules: tensor parallelism: an adapter on lm_head is not supported"),
              std::string::npos)
        << m;
  }
}

}  // namespace
}  // namespace lathe::train
