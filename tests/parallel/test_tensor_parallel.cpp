// Tensor parallelism (parallel/tensor_parallel.h, parallel/process_groups.h) under mpirun
// (ctest runs -np 2 and -np 4). For every layout dp x tp that fits the world, a sharded model
// must give the loss, the full logits and the gradients of the one-process model built from the
// same seed on the same global batch (each data-parallel rank takes its rows; gradients averaged
// over the DP group), within f32 tolerance: GPT-2 (tied, biases, dropout), Llama with GQA,
// Qwen2-style q/k/v biases and an untied head, vocabularies not divisible by TP, and the Ladder
// residual (TP ladder equals one-process ladder, also in cached generation).
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "autograd/autograd.h"
#include "models/model.h"
#include "parallel/process_groups.h"
#include "parallel/tensor_parallel.h"

namespace lathe::parallel {
namespace {

using models::ModelSpec;

ModelSpec gpt2_tiny(int64_t vocab) {
  ModelSpec s;
  s.arch = models::Arch::gpt2;
  s.vocab_size = vocab;
  s.n_layer = 2;
  s.n_head = 4;
  s.d_model = 32;
  s.max_seq_len = 16;
  s.dropout = 0.1;
  return s;
}

ModelSpec llama_tiny_gqa(int64_t vocab) {
  ModelSpec s;
  s.arch = models::Arch::llama;
  s.vocab_size = vocab;
  s.n_layer = 2;
  s.n_head = 8;
  s.n_kv_head = 4;
  s.d_model = 64;
  s.d_ff = 96;
  s.max_seq_len = 16;
  s.bias = false;
  s.qkv_bias = true;         // Qwen2
  s.tie_embeddings = false;  // a column-parallel lm_head
  return s;
}

Tensor ids_for(const ModelSpec& s, int64_t B, int64_t T, uint64_t seed) {
  Generator g(seed);
  std::vector<int64_t> v(static_cast<size_t>(B * T));
  for (auto& x : v) x = static_cast<int64_t>(g.uniform_double() * static_cast<double>(s.vocab_size));
  return Tensor::from_vector<int64_t>(v, {B, T});
}

double max_rel_diff(const Tensor& a, const Tensor& b) {
  auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  EXPECT_EQ(va.size(), vb.size());
  double scale = 1e-6, d = 0;
  for (size_t i = 0; i < va.size(); ++i) scale = std::max(scale, std::abs(vb[i]));
  for (size_t i = 0; i < va.size() && i < vb.size(); ++i) d = std::max(d, std::abs(va[i] - vb[i]));
  return d / scale;
}

// One forward/backward of the sharded model against the reference; returns the loss.
// Layouts that do not fit the world are left out.
void check_layout(const ModelSpec& spec_in, int tp, int64_t pad_multiple, bool sp = false) {
  auto world_comm = world();
  if (world_comm->size() % tp != 0) return;
  LayoutSpec ls;
  ls.tensor_parallel = tp;
  ProcessGroups groups(world_comm, ls);
  const int dp = groups.dp_size();
  ModelSpec spec = spec_in;
  // TP ranks draw the same dropout masks as one process; DP ranks draw their own (for other
  // rows), which one process cannot reproduce: dropout only without DP.
  if (dp > 1) spec.dropout = 0;
  const int64_t B = 2 * dp, T = 8;
  Tensor ids = ids_for(spec, B, T, 7), targets = ids_for(spec, B, T, 8);

  auto ref = models::build_model(spec, 1234);
  Tensor ref_loss = ref->loss(ids, targets);
  ref_loss.backward();
  Tensor ref_logits;
  {
    autograd::NoGradGuard ng;
    ref->eval();
    ref_logits = ref->forward(ids);
  }

  auto model = models::build_model(spec, 1234);
  TensorParallelShards shards = shard_for_tensor_parallel(*model, groups.tp(), pad_multiple, sp);
  EXPECT_EQ(shards.padded_vocab % (tp * pad_multiple), 0);
  // This DP rank's rows of the global batch.
  const int64_t b = B / dp;
  Tensor my_ids = ids.narrow(0, groups.dp_rank() * b, b).contiguous();
  Tensor my_targets = targets.narrow(0, groups.dp_rank() * b, b).contiguous();
  Tensor loss = model->loss(my_ids, my_targets);
  loss.backward();
  all_reduce_partial_grads(*model, shards.partial_grad, *groups.tp());
  Tensor mean_loss = loss.detach().clone();
  groups.dp()->all_reduce(mean_loss, ReduceOp::avg);
  EXPECT_NEAR(mean_loss.item(), ref_loss.item(), 2e-6 * std::abs(ref_loss.item())) << groups.name();

  for (const auto& [name, p] : model->named_parameters()) {
    Tensor g = p.grad().clone();
    groups.dp()->all_reduce(g, ReduceOp::avg);
    Tensor expect = slice_shard(name, ref->parameter(name).grad(), spec, tp, groups.tp_rank(), pad_multiple);
    ASSERT_EQ(g.shape(), expect.shape()) << name;
    EXPECT_LT(max_rel_diff(g, expect), 1e-4) << name << " " << groups.name();
    // The shard's weight is the slice of the full init.
    EXPECT_EQ(max_rel_diff(p, slice_shard(name, ref->parameter(name), spec, tp, groups.tp_rank(), pad_multiple)), 0)
        << name;
  }
  // Full logits (gathered, padding dropped) in eval mode.
  model->eval();
  autograd::NoGradGuard ng;
  Tensor logits = model->forward(my_ids);
  EXPECT_LT(max_rel_diff(logits, ref_logits.narrow(0, groups.dp_rank() * b, b)), 2e-5);
  // The TP grad norm equals the full model's.
  double ref_sq = 0;
  for (const auto& [name, p] : ref->named_parameters()) {
    double n = kernels::reduce(kernels::ReduceOp::norm, p.grad(), {}, false).item();
    ref_sq += n * n;
  }
  if (dp == 1) EXPECT_NEAR(tp_grad_norm(model->named_parameters(), shards, *groups.tp()), std::sqrt(ref_sq), 1e-5 * std::sqrt(ref_sq));
}

TEST(TensorParallel, Gpt2TiedDropoutVocabNotDivisible) {
  for (int tp : {2, 4}) {
    SCOPED_TRACE("tp " + std::to_string(tp));
    check_layout(gpt2_tiny(50), tp, 1);  // 50 rows: padded to 52 (tp 4) with pad multiple 1
  }
}

TEST(TensorParallel, Gpt2DefaultPadding) { check_layout(gpt2_tiny(300), 2, 128); }

TEST(TensorParallel, LlamaGqaQkvBiasUntiedHead) {
  for (int tp : {2, 4}) {
    SCOPED_TRACE("tp " + std::to_string(tp));
    check_layout(llama_tiny_gqa(61), tp, 1);
  }
}

TEST(TensorParallel, DataTimesTensorParallel) {
  // -np 4: dp2 x tp2 (-np 2: dp2 x tp1 and dp1 x tp2 are the other tests' layouts).
  check_layout(llama_tiny_gqa(61), 2, 1);
  check_layout(gpt2_tiny(50), 1, 1);
}

TEST(TensorParallel, LadderTpEqualsLadderOneProcess) {
  ModelSpec g = gpt2_tiny(50);
  g.ladder_residual = true;  // row-parallel biases summed once (rank 0) and reduced later
  ModelSpec l = llama_tiny_gqa(61);
  l.ladder_residual = true;
  for (int tp : {2, 4}) {
    SCOPED_TRACE("tp " + std::to_string(tp));
    check_layout(g, tp, 1);
    check_layout(l, tp, 1);
  }
}

// Megatron-SP inside the TP group: norms, dropout (the slice of the whole sequence's mask) and
// residual adds on sequence slices, all-gather / reduce-scatter around the parallel layers,
// norm and row-bias gradients summed over the group.
TEST(TensorParallel, MegatronSequenceParallelEqualsOneProcess) {
  for (int tp : {2, 4}) {
    SCOPED_TRACE("tp " + std::to_string(tp));
    check_layout(gpt2_tiny(50), tp, 1, true);
    check_layout(llama_tiny_gqa(61), tp, 1, true);
  }
}

TEST(TensorParallel, LadderCachedGenerationEqualsOneProcess) {
  auto world_comm = world();
  const int tp = world_comm->size();
  for (bool ladder : {false, true}) {
    ModelSpec s = llama_tiny_gqa(61);
    if (tp > 4) GTEST_SKIP();
    s.ladder_residual = ladder;
    auto ref = models::build_model(s, 99);
    auto model = models::build_model(s, 99);
    LayoutSpec ls;
    ls.tensor_parallel = tp;
    ProcessGroups groups(world_comm, ls);
    shard_for_tensor_parallel(*model, groups.tp(), 1);
    models::SampleOptions o;
    o.max_new_tokens = 8;
    o.temperature = 0.8;
    o.seed = 5;
    auto a = models::generate(*ref, {1, 2, 3}, o);
    auto b = models::generate(*model, {1, 2, 3}, o);
    EXPECT_EQ(a, b) << "ladder " << ladder;
    o.use_cache = false;
    EXPECT_EQ(models::generate(*model, {1, 2, 3}, o), b);
  }
}

TEST(ProcessGroupsTest, GridOrderAndGroups) {
  auto w = world();
  const int n = w->size();
  for (int tp = 1; tp <= n; ++tp) {
    if (n % tp) continue;
    LayoutSpec ls;
    ls.tensor_parallel = tp;
    ProcessGroups g(w, ls);
    EXPECT_EQ(g.dp_size(), n / tp);
    EXPECT_EQ(g.tp()->size(), tp);
    EXPECT_EQ(g.dp()->size(), n / tp);
    EXPECT_EQ(g.tp_rank(), w->rank() % tp);
    EXPECT_EQ(g.dp_rank(), w->rank() / tp);
    EXPECT_EQ(g.tp()->rank(), g.tp_rank());
    EXPECT_EQ(g.dp()->rank(), g.dp_rank());
    // The TP group holds adjacent world ranks: the sum of their world ranks tells which.
    Tensor r = Tensor::scalar(w->rank(), DType::f64);
    g.tp()->all_reduce(r);
    const int first = w->rank() / tp * tp;
    EXPECT_EQ(r.item(), tp * first + tp * (tp - 1) / 2);
  }
}

TEST(ProcessGroupsTest, WrongLayoutsNameFieldAndNumbers) {
  LayoutSpec ls;
  ls.tensor_parallel = 4;
  auto e = layout_errors(6, ls);
  ASSERT_EQ(e.size(), 1u);
  EXPECT_NE(e[0].find("parallel.tensor_parallel: the world of 6 ranks is not a multiple of tensor_parallel (4)"),
            std::string::npos)
      << e[0];
  ls.tensor_parallel = 2;
  ls.sequence_parallel = 4;
  e = layout_errors(8, ls);
  ASSERT_EQ(e.size(), 1u);
  EXPECT_NE(e[0].find("parallel.sequence_parallel: MEGATRON"), std::string::npos) << e[0];
  ls.sp_mode = SpMode::ulysses;
  ls.sequence_parallel = 3;
  e = layout_errors(8, ls);
  ASSERT_EQ(e.size(), 1u);
  EXPECT_NE(e[0].find("tensor_parallel (2) x sequence_parallel (3) = 6"), std::string::npos) << e[0];
  EXPECT_TRUE(layout_errors(12, ls).empty());
  for (int r = 0; r < 12; ++r) {
    auto c = ProcessGroups::coord_of(r, 2, 3);
    EXPECT_EQ(ProcessGroups::rank_of(c, 2, 3), r);
  }
  EXPECT_EQ(layout_name(2, ls), "dp2 x tp2 x sp3");
}

TEST(TensorParallel, IndivisibleHeadsAreRejectedWithNumbers) {
  auto w = world();
  if (w->size() < 2) GTEST_SKIP();
  ModelSpec s = llama_tiny_gqa(61);
  s.n_kv_head = 1;
  s.n_head = 8;
  auto m = models::build_model(s, 1);
  LayoutSpec ls;
  ls.tensor_parallel = w->size();
  ProcessGroups g(w, ls);
  try {
    shard_for_tensor_parallel(*m, g.tp(), 1);
    FAIL() << "expected an error";
  } catch (const lathe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.n_kv_head (1) is not divisible by parallel.tensor_parallel"),
              std::string::npos)
        << e.what();
  }
}

TEST(TensorParallel, GatherShardsInvertsSlicing) {
  ModelSpec s = gpt2_tiny(50);
  auto m = models::build_model(s, 3);
  for (int tp : {2, 4})
    for (const auto& [name, p] : m->named_parameters()) {
      std::vector<Tensor> parts;
      for (int r = 0; r < tp; ++r) parts.push_back(slice_shard(name, p, s, tp, r, 1));
      EXPECT_EQ(max_rel_diff(gather_shards(name, parts, s), p), 0) << name;
    }
}

}  // namespace
}  // namespace lathe::parallel
