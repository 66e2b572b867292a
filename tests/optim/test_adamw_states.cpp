// AdamW's HF variant through the optimizer, 8-bit blockwise states (against f32 AdamW with
// bitsandbytes' tolerances, specs/optimizers.md §7; which tensors stay f32; save/load bit for
// bit), paged states (bit-identical to unpaged, backing files' lifetime, memory report) and
// the config rules of the registry for these options.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <regex>

#include "configs/config.h"
#include "core/memory.h"
#include "core/paged.h"
#include "optim/adamw.h"
#include "optim/blockwise8.h"
#include "optim/registry.h"
#include "optim/sgd_sai.h"
#include "tests/common/test_helpers.h"

using namespace lathe;
using namespace lathe::optim;
using lathe::test::contains;
using lathe::test::error_of;

namespace {

Tensor randn(const Shape& s, uint64_t seed, double scale) {
  Generator g(seed);
  Tensor t = Tensor::randn(s, g);
  kernels::scale_(t, scale);
  return t;
}

ParamGroup group_of(const NamedParams& ps, double wd) {
  ParamGroup g;
  g.params = ps;
  g.weight_decay = wd;
  return g;
}

std::map<std::string, Tensor> copy_of(const std::map<std::string, Tensor>& sd) {
  std::map<std::string, Tensor> out;
  for (const auto& [k, t] : sd) out[k] = t.clone();
  return out;
}

}  // namespace

TEST(AdamWHf, OptimizerUsesTheVariant) {
  // One element, two steps of the HF form written out.
  Tensor p = Tensor::from_vector<float>({1.5f}, {1}).set_requires_grad();
  AdamWOptions o;
  o.lr = 0.1;
  o.eps = 1e-6;
  o.variant = kernels::AdamVariant::hf;
  AdamW opt({group_of({{"p", p}}, 0.2)}, o);
  double P = 1.5, M = 0, V = 0;
  const double gs[] = {0.4, -0.1};
  for (int t = 1; t <= 2; ++t) {
    p.set_grad(Tensor::from_vector<float>({static_cast<float>(gs[t - 1])}, {1}));
    opt.step();
    M = 0.9 * M + 0.1 * gs[t - 1];
    V = 0.999 * V + 0.001 * gs[t - 1] * gs[t - 1];
    const double bc1 = 1 - std::pow(0.9, t), bc2 = 1 - std::pow(0.999, t);
    P -= 0.1 * std::sqrt(bc2) / bc1 * M / (std::sqrt(V) + 1e-6);
    P -= 0.1 * 0.2 * P;
    EXPECT_NEAR(p.item(), P, 2e-6) << "step " << t;
  }
}

// bitsandbytes' test_optimizer8bit, restated: 8-bit AdamW against f32 AdamW over 50 steps. After
// each step the f32 reference takes the dequantised 8-bit moments, so the comparison measures
// the error of one step, not drift. States: fewer than 20 elements outside atol 3e-3 / rtol 1e-3;
// parameters: mean |diff| < 6e-5 and mean relative difference < 6e-4.
TEST(AdamW8bit, MatchesF32AdamWWithinBitsandbytesTolerances) {
  for (auto variant : {kernels::AdamVariant::torch, kernels::AdamVariant::hf}) {
    for (const Shape& shape : std::vector<Shape>{{256, 32}, {8, 1024}, {2, 4097}}) {  // bnb: 1024 rows
      Tensor p8 = randn(shape, 1, 0.1).set_requires_grad();
      Tensor p32 = p8.clone().set_requires_grad();
      AdamWOptions o;
      o.lr = 1e-3;
      o.variant = variant;
      AdamWOptions o8 = o;
      o8.state_bits = 8;
      AdamW a8({group_of({{"w", p8}}, 0.01)}, o8), a32({group_of({{"w", p32}}, 0.01)}, o);
      const int64_t n = p8.numel();
      for (int t = 1; t <= 50; ++t) {
        Tensor g = randn(shape, 100 + t, 0.01);
        p8.set_grad(g);
        p32.set_grad(g);
        a8.step();
        a32.step();
        const Moments8 s8 = moments8(a8.param_state("w"));
        const Tensor m8 = dequantize_m(s8, 256), v8 = dequantize_v(s8, 256);
        const auto m8v = m8.to_vector<double>(), v8v = v8.to_vector<double>();
        const auto m32v = a32.param_state("w").at("exp_avg").to_vector<double>();
        const auto v32v = a32.param_state("w").at("exp_avg_sq").to_vector<double>();
        int bad_m = 0, bad_v = 0;
        for (int64_t i = 0; i < n; ++i) {
          bad_m += std::abs(m8v[i] - m32v[i]) > 3e-3 + 1e-3 * std::abs(m32v[i]);
          bad_v += std::abs(v8v[i] - v32v[i]) > 3e-3 + 1e-3 * std::abs(v32v[i]);
        }
        EXPECT_LT(bad_m, 20) << "step " << t;
        EXPECT_LT(bad_v, 20) << "step " << t;
        const auto a = p8.to_vector<double>(), b = p32.to_vector<double>();
        double abs_err = 0, rel_err = 0;
        for (int64_t i = 0; i < n; ++i) {
          abs_err += std::abs(a[i] - b[i]);
          rel_err += std::abs(a[i] - b[i]) / (std::abs(b[i]) + 1e-8);
        }
        ASSERT_LT(abs_err / n, 6e-5) << "step " << t << " " << shape_str(shape);
        ASSERT_LT(rel_err / n, 6e-4) << "step " << t << " " << shape_str(shape);
        a32.param_state("w").at("exp_avg").copy_(m8);
        a32.param_state("w").at("exp_avg_sq").copy_(v8);
      }
      EXPECT_EQ(a8.state_bytes()[0], moments8_bytes(n, 256));
    }
  }
}

TEST(AdamW8bit, SmallTensorsAndEmbeddingsKeepF32States) {
  lathe::OptimizerConfig cfg;
  cfg.set_state_bits(8);
  Tensor emb = randn({100, 64}, 1, 0.1).set_requires_grad();   // 6400 elements, an embedding
  Tensor pos = randn({80, 64}, 2, 0.1).set_requires_grad();    // 5120, position embedding
  Tensor w = randn({64, 64}, 3, 0.1).set_requires_grad();      // 4096: exactly min_8bit_size
  Tensor small = randn({63, 64}, 4, 0.1).set_requires_grad();  // 4032 < 4096
  NamedParams named = {{"embed.weight", emb}, {"pos_embed.weight", pos}, {"layers.0.mlp.w", w}, {"layers.0.x", small}};
  auto opt = make_optimizer(cfg, named);
  for (auto& [n, p] : named) p.set_grad(randn(p.shape(), 9, 0.01));
  opt->step();
  EXPECT_TRUE(opt->param_state("embed.weight").count("exp_avg"));
  EXPECT_TRUE(opt->param_state("pos_embed.weight").count("exp_avg"));
  EXPECT_TRUE(has_moments8(opt->param_state("layers.0.mlp.w")));
  EXPECT_EQ(opt->param_state("layers.0.mlp.w").at("exp_avg_q8").dtype(), DType::u8);
  EXPECT_TRUE(opt->param_state("layers.0.x").count("exp_avg"));
  // eight_bit.f32_params replaces the default: now the embeddings go 8-bit and the MLP stays f32.
  cfg.mutable_eight_bit()->set_f32_params(".*mlp.*");
  auto opt2 = make_optimizer(cfg, named);
  opt2->step();
  EXPECT_TRUE(has_moments8(opt2->param_state("embed.weight")));
  EXPECT_TRUE(opt2->param_state("layers.0.mlp.w").count("exp_avg"));
}

TEST(AdamW8bit, SaveLoadReproducesTheStateBitForBit) {
  Tensor p1 = randn({40, 128}, 1, 0.1).set_requires_grad(), p2 = p1.clone().set_requires_grad();
  AdamWOptions o;
  o.state_bits = 8;
  o.min_8bit_size = 0;
  AdamW full({group_of({{"w", p1}}, 0.01)}, o), part({group_of({{"w", p2}}, 0.01)}, o);
  for (int t = 0; t < 3; ++t) {
    Tensor g = randn({40, 128}, 20 + t, 0.01);
    p1.set_grad(g);
    p2.set_grad(g);
    full.step();
    part.step();
  }
  const auto saved = copy_of(part.state_dict());
  AdamW resumed({group_of({{"w", p2}}, 0.01)}, o);
  resumed.load_state_dict(saved);
  for (const char* k : {"exp_avg_q8", "exp_avg_sq_q8"})
    EXPECT_EQ(resumed.param_state("w").at(k).to_vector<uint8_t>(), saved.at(std::string("w/") + k).to_vector<uint8_t>());
  for (const char* k : {"exp_avg_absmax", "exp_avg_sq_absmax"})
    EXPECT_EQ(resumed.param_state("w").at(k).to_vector<float>(), saved.at(std::string("w/") + k).to_vector<float>());
  for (int t = 3; t < 6; ++t) {
    Tensor g = randn({40, 128}, 20 + t, 0.01);
    p1.set_grad(g);
    p2.set_grad(g);
    full.step();
    resumed.step();
  }
  EXPECT_EQ(p1.to_vector<float>(), p2.to_vector<float>());
  EXPECT_EQ(full.param_state("w").at("exp_avg_q8").to_vector<uint8_t>(),
            resumed.param_state("w").at("exp_avg_q8").to_vector<uint8_t>());
}

// ---- paged states ---------------------------------------------------------------------------------

TEST(PagedState, BitIdenticalToUnpagedAndCountedAsPaged) {
  test::TmpDir dir("lathe_paged");
  for (int bits : {32, 8}) {
    Tensor a1 = randn({64, 100}, 1, 0.1).set_requires_grad(), b1 = randn({30}, 2, 0.1).set_requires_grad();
    Tensor a2 = a1.clone().set_requires_grad(), b2 = b1.clone().set_requires_grad();
    AdamWOptions o;
    o.state_bits = bits;
    AdamW plain({group_of({{"a", a1}, {"b", b1}}, 0.01)}, o);
    const int64_t before = memory_stats().paged_of(MemCategory::optimizer_state);
    {
      AdamW paged({group_of({{"a", a2}, {"b", b2}}, 0.01)}, o);
      PagingOptions po;
      po.enabled = true;
      po.min_numel = 1000;  // "a" (6400 elements) is paged, "b" (30) and 8-bit absmax (25) are not
      po.dir = dir.path();
      paged.set_paging(po);
      for (int t = 0; t < 4; ++t) {
        Tensor ga = randn({64, 100}, 10 + t, 0.01), gb = randn({30}, 20 + t, 0.01);
        a1.set_grad(ga);
        a2.set_grad(ga);
        b1.set_grad(gb);
        b2.set_grad(gb);
        plain.step();
        paged.step();
      }
      EXPECT_EQ(a1.to_vector<float>(), a2.to_vector<float>()) << bits << "-bit";
      EXPECT_EQ(b1.to_vector<float>(), b2.to_vector<float>()) << bits << "-bit";
      const int64_t want = bits == 32 ? 2 * 6400 * 4 : 2 * 6400;  // exp_avg(_sq) or the two u8 code arrays
      EXPECT_EQ(paged.paged_state_bytes()[0], want);
      EXPECT_EQ(memory_stats().paged_of(MemCategory::optimizer_state) - before, want);
      EXPECT_TRUE(contains(memory_stats().str(), "paged_optimizer_state")) << memory_stats().str();
      EXPECT_EQ(plain.paged_state_bytes()[0], 0);
      for (const auto& [k, t] : paged.param_state("b")) EXPECT_FALSE(t.storage()->paged()) << k;
      // The backing files live in the paging directory while the optimizer does.
      int files = 0;
      for (const auto& e : std::filesystem::directory_iterator(dir.path())) files += e.is_regular_file();
      EXPECT_EQ(files, 2);
      EXPECT_EQ(paged_backing_files().size(), 2u);
    }
    EXPECT_EQ(memory_stats().paged_of(MemCategory::optimizer_state), before);
    EXPECT_TRUE(std::filesystem::is_empty(dir.path())) << "backing files removed with the state";
  }
}

TEST(PagedState, ResumedPagedStateIsPagedAgain) {
  test::TmpDir dir("lathe_paged");
  Tensor a = randn({50, 50}, 1, 0.1).set_requires_grad();
  PagingOptions po;
  po.enabled = true;
  po.min_numel = 100;
  po.dir = dir.path();
  AdamW first({group_of({{"a", a}}, 0.0)}, AdamWOptions());
  first.set_paging(po);
  a.set_grad(randn({50, 50}, 3, 0.01));
  first.step();
  const auto saved = copy_of(first.state_dict());
  AdamW second({group_of({{"a", a}}, 0.0)}, AdamWOptions());
  second.set_paging(po);
  second.load_state_dict(saved);
  EXPECT_TRUE(second.param_state("a").at("exp_avg").storage()->paged());
  EXPECT_EQ(second.param_state("a").at("exp_avg").to_vector<float>(), saved.at("a/exp_avg").to_vector<float>());
}

// ---- config rules ------------------------------------------------------------------------------------

TEST(OptimizerConfigRules, InvalidCombinationsNameTheField) {
  NamedParams named = {{"w", randn({4, 4}, 1, 0.1).set_requires_grad()}};
  auto err = [&](const lathe::OptimizerConfig& c) { return error_of([&] { make_optimizer(c, named); }); };
  lathe::OptimizerConfig c;
  c.set_state_bits(16);
  EXPECT_TRUE(contains(err(c), "optimizer.state_bits") && contains(err(c), "16")) << err(c);
  c.set_state_bits(8);
  c.set_type(lathe::OptimizerConfig::SGD);
  EXPECT_TRUE(contains(err(c), "optimizer.state_bits") && contains(err(c), "SGD")) << err(c);
  c.set_type(lathe::OptimizerConfig::SGD_SAI);
  EXPECT_TRUE(contains(err(c), "optimizer.state_bits") && contains(err(c), "SGD_SAI")) << err(c);
  c = lathe::OptimizerConfig();
  c.set_eps(0);
  EXPECT_TRUE(contains(err(c), "optimizer.eps")) << err(c);
  c = lathe::OptimizerConfig();
  c.set_type(lathe::OptimizerConfig::SGD_SAI);
  c.mutable_sgd_sai()->set_normalize(true);
  c.set_layerwise(true);
  EXPECT_TRUE(contains(err(c), "optimizer.sgd_sai.normalize") && contains(err(c), "layerwise")) << err(c);
  c = lathe::OptimizerConfig();
  c.set_type(lathe::OptimizerConfig::SGD_SAI);
  c.mutable_sgd_sai()->set_momentum(1.0);
  EXPECT_TRUE(contains(err(c), "optimizer.sgd_sai.momentum")) << err(c);
  c = lathe::OptimizerConfig();
  c.set_state_bits(8);
  c.mutable_eight_bit()->set_block_size(100);
  EXPECT_TRUE(contains(err(c), "optimizer.eight_bit.block_size")) << err(c);
  c.mutable_eight_bit()->set_block_size(256);
  c.mutable_eight_bit()->set_f32_params("(");
  EXPECT_TRUE(contains(err(c), "optimizer.eight_bit.f32_params")) << err(c);
  c = lathe::OptimizerConfig();
  c.set_type(lathe::OptimizerConfig::SGD_SAI);
  c.set_sgd_momentum(0.9);
  EXPECT_TRUE(contains(err(c), "optimizer.sgd_momentum") && contains(err(c), "sgd_sai.momentum")) << err(c);
}

TEST(OptimizerConfigRules, ConfigSelectsTheOptimizers) {
  NamedParams named = {{"w", randn({4, 4}, 1, 0.1).set_requires_grad()}};
  lathe::OptimizerConfig c;
  c.set_type(lathe::OptimizerConfig::SGD_SAI);
  c.mutable_sgd_sai()->set_momentum(0.0);
  auto o = make_optimizer(c, named);
  ASSERT_NE(dynamic_cast<SGDSaI*>(o.get()), nullptr);
  EXPECT_EQ(dynamic_cast<SGDSaI*>(o.get())->options().momentum, 0.0);
  c = lathe::OptimizerConfig();
  c.set_adamw_variant(lathe::OptimizerConfig::HF);
  c.set_state_bits(8);
  c.set_paged(true);
  c.mutable_paging()->set_min_numel(7);
  o = make_optimizer(c, named);
  auto* a = dynamic_cast<AdamW*>(o.get());
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->options().variant, kernels::AdamVariant::hf);
  EXPECT_EQ(a->options().state_bits, 8);
  EXPECT_TRUE(o->paging().enabled);
  EXPECT_EQ(o->paging().min_numel, 7);
}

TEST(OptimizerConfigRules, ResolveWritesTheDependentDefaults) {
  // Every section is present after resolve (materialised defaults), so a full config with any
  // optimizer type must still validate; the variant follows the type and the 8-bit exceptions
  // are written out.
  auto resolved = [](const std::string& text) {
    lathe::RunConfig c = configs::parse_text(text + " train { steps: 1 }", "test");
    configs::resolve(c);
    const std::vector<std::string> errs = configs::validate(c);
    EXPECT_TRUE(errs.empty()) << text << ": " << (errs.empty() ? "" : errs[0]);
    return c;
  };
  lathe::RunConfig a = resolved("name: \"a\" optimizer { type: SGD_SAI }");
  EXPECT_EQ(a.optimizer().adamw_variant(), lathe::OptimizerConfig::TORCH);
  EXPECT_EQ(a.optimizer().eight_bit().f32_params(), configs::kDefaultEightBitF32Params);
  lathe::RunConfig g = resolved("name: \"g\" optimizer { type: GALORE }");
  EXPECT_EQ(g.optimizer().adamw_variant(), lathe::OptimizerConfig::HF);
  lathe::RunConfig t = resolved("name: \"t\" optimizer { type: GALORE adamw_variant: TORCH }");
  EXPECT_EQ(t.optimizer().adamw_variant(), lathe::OptimizerConfig::TORCH);
  EXPECT_TRUE(std::regex_match("embed.weight", std::regex(configs::kDefaultEightBitF32Params)));
  EXPECT_TRUE(std::regex_match("base.pos_embed.weight", std::regex(configs::kDefaultEightBitF32Params)));
  EXPECT_FALSE(std::regex_match("layers.0.attn.q_proj.weight", std::regex(configs::kDefaultEightBitF32Params)));
}
