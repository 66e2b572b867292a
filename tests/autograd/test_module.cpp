// Module: dotted names in registration order, counting, freeze by regex, train/eval,
// lookup and replacement, gradient zeroing, parameter memory accounting.
#include <gtest/gtest.h>

#include "core/memory.h"
#include "test_util.h"

using namespace lathe;
using lathe::test::randn64;

namespace {

struct Proj : ag::Module {
  Tensor weight, bias;
  Proj(int64_t out, int64_t in, uint64_t seed, bool with_bias) {
    weight = register_parameter("weight", randn64({out, in}, seed));
    if (with_bias) bias = register_parameter("bias", randn64({out}, seed + 1));
  }
  std::string type_name() const override { return "Proj"; }
};

struct Attn : ag::Module {
  std::shared_ptr<Proj> q_proj, k_proj, v_proj, o_proj;
  explicit Attn(uint64_t seed) {
    q_proj = register_module("q_proj", std::make_shared<Proj>(4, 4, seed, true));
    k_proj = register_module("k_proj", std::make_shared<Proj>(2, 4, seed + 10, false));
    v_proj = register_module("v_proj", std::make_shared<Proj>(2, 4, seed + 20, false));
    o_proj = register_module("o_proj", std::make_shared<Proj>(4, 4, seed + 30, false));
  }
};

struct Layer : ag::Module {
  std::shared_ptr<Attn> attn;
  Tensor norm_w;
  explicit Layer(uint64_t seed) {
    norm_w = register_parameter("norm_w", randn64({4}, seed));
    attn = register_module("attn", std::make_shared<Attn>(seed + 100));
  }
};

struct Model : ag::Module {
  std::vector<std::shared_ptr<Layer>> layers;
  explicit Model(int n) {
    register_parameter("embed", randn64({10, 4}, 1));
    auto list = register_module("layers", std::make_shared<ag::Module>());
    for (int i = 0; i < n; ++i)
      layers.push_back(list->register_module(std::to_string(i), std::make_shared<Layer>(1000 * (i + 1))));
    register_buffer("rope_cos", randn64({3, 2}, 2));
  }
};

}  // namespace

TEST(Module, DottedNamesInRegistrationOrder) {
  Model m(2);
  std::vector<std::string> names;
  for (auto& p : m.named_parameters()) names.push_back(p.first);
  std::vector<std::string> want = {"embed"};
  for (int i = 0; i < 2; ++i) {
    std::string l = "layers." + std::to_string(i) + ".";
    for (const char* s : {"norm_w", "attn.q_proj.weight", "attn.q_proj.bias", "attn.k_proj.weight",
                          "attn.v_proj.weight", "attn.o_proj.weight"})
      want.push_back(l + s);
  }
  EXPECT_EQ(names, want);
  // The registry shares the TensorImpl with the member.
  EXPECT_TRUE(m.parameter("layers.1.attn.q_proj.weight").is_same(m.layers[1]->attn->q_proj->weight));
  EXPECT_TRUE(m.parameters()[0].requires_grad());
  auto bufs = m.named_buffers();
  ASSERT_EQ(bufs.size(), 1u);
  EXPECT_EQ(bufs[0].first, "rope_cos");
  EXPECT_FALSE(bufs[0].second.requires_grad());
  std::vector<std::string> mods;
  for (auto& p : m.named_modules()) mods.push_back(p.first);
  ASSERT_EQ(mods.size(), 1u + 1u + 2u * 6u);
  EXPECT_EQ(mods[0], "");
  EXPECT_EQ(mods[1], "layers");
  EXPECT_EQ(mods[2], "layers.0");
  EXPECT_EQ(mods[3], "layers.0.attn");
  EXPECT_EQ(mods[4], "layers.0.attn.q_proj");
  EXPECT_EQ(m.module("layers.0.attn.v_proj")->type_name(), "Proj");
}

TEST(Module, CountingAndFreeze) {
  Model m(3);
  // per layer: 4 + (16 + 4) + 8 + 8 + 16 = 56; embed 40
  const int64_t total = 40 + 3 * 56;
  EXPECT_EQ(m.num_parameters(), total);
  EXPECT_EQ(m.num_parameters(true), total);
  EXPECT_EQ(m.freeze("q_proj|v_proj"), 3 * 3);  // q weight, q bias, v weight per layer
  EXPECT_EQ(m.num_parameters(true), total - 3 * (16 + 4 + 8));
  EXPECT_FALSE(m.parameter("layers.2.attn.q_proj.bias").requires_grad());
  EXPECT_TRUE(m.parameter("layers.2.attn.k_proj.weight").requires_grad());
  EXPECT_EQ(m.freeze(), 1 + 3 * 6);
  EXPECT_EQ(m.num_parameters(true), 0);
  EXPECT_EQ(m.unfreeze("^layers\\.1\\."), 6);
  EXPECT_EQ(m.num_parameters(true), 56);
  EXPECT_THROW(m.freeze("(unclosed"), Error);
}

TEST(Module, TrainEvalIsRecursive) {
  Model m(2);
  EXPECT_TRUE(m.is_training());
  m.eval();
  for (auto& p : m.named_modules()) EXPECT_FALSE(p.second->is_training()) << p.first;
  m.train();
  for (auto& p : m.named_modules()) EXPECT_TRUE(p.second->is_training()) << p.first;
  m.layers[0]->eval();
  EXPECT_FALSE(m.layers[0]->attn->q_proj->is_training());
  EXPECT_TRUE(m.layers[1]->attn->q_proj->is_training());
}

TEST(Module, ParametersAreCountedAsParameterMemory) {
  int64_t before = memory_stats().current_of(MemCategory::parameters);
  {
    Model m(1);
    int64_t after = memory_stats().current_of(MemCategory::parameters);
    EXPECT_EQ(after - before, (40 + 56) * 8);
    EXPECT_EQ(m.parameters()[0].storage()->category(), MemCategory::parameters);
  }
  EXPECT_EQ(memory_stats().current_of(MemCategory::parameters), before);
}

TEST(Module, ZeroGradAndGradFlow) {
  Model m(1);
  Tensor w = m.parameter("layers.0.attn.q_proj.weight");
  Tensor x = randn64({2, 4}, 5);
  ag::sum(ag::linear(x, w, m.parameter("layers.0.attn.q_proj.bias"))).backward();
  ASSERT_TRUE(w.grad().defined());
  // d sum(x w^T) / dw[o][i] = sum_n x[n][i]
  std::vector<double> xv = x.to_vector<double>(), gv = w.grad().to_vector<double>();
  for (int o = 0; o < 4; ++o)
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(gv[o * 4 + i], xv[i] + xv[4 + i], 1e-12);
  m.zero_grad(/*set_to_none=*/false);
  ASSERT_TRUE(w.grad().defined());
  for (double g : w.grad().to_vector<double>()) EXPECT_EQ(g, 0.0);
  m.zero_grad();
  EXPECT_FALSE(w.grad().defined());
}

TEST(Module, ErrorsAndReplacement) {
  Model m(1);
  EXPECT_THROW(m.register_parameter("embed", randn64({2}, 1)), Error);
  EXPECT_THROW(m.register_parameter("a.b", randn64({2}, 1)), Error);
  EXPECT_THROW(m.parameter("layers.0.attn.nope.weight"), Error);
  EXPECT_THROW(m.parameter("layers.0.attn.q_proj.nope"), Error);
  Tensor leaf = randn64({2}, 3).set_requires_grad();
  EXPECT_THROW(m.register_parameter("derived", ag::mul(leaf, 2.0)), Error);

  auto repl = std::make_shared<Proj>(4, 4, 77, false);
  m.eval();
  m.replace_module("layers.0.attn.q_proj", repl);
  EXPECT_EQ(m.module("layers.0.attn.q_proj").get(), repl.get());
  EXPECT_FALSE(repl->is_training());  // takes the mode of the module it replaces
  EXPECT_FALSE(m.has_parameter("layers.0.attn.q_proj.bias"));
  EXPECT_TRUE(m.has_parameter("layers.0.attn.q_proj.weight"));
  EXPECT_THROW(m.replace_module("layers.0.attn.nope", repl), Error);

  Tensor nw = randn64({4, 4}, 78);
  m.replace_parameter("layers.0.attn.o_proj.weight", nw);
  EXPECT_TRUE(m.parameter("layers.0.attn.o_proj.weight").is_same(nw));
  EXPECT_TRUE(nw.requires_grad());
  EXPECT_THROW(m.replace_parameter("layers.0.attn.o_proj.weight", randn64({3}, 1)), Error);
}

namespace {

// A module interface and two implementations, to test slots without models/.
struct Op : ag::Module {
  virtual Tensor apply(const Tensor& x) = 0;
};
struct Scale : Op {
  ag::ParamRef w;
  explicit Scale(double s) { w = register_param("w", Tensor::full({1}, s, DType::f64)); }
  Tensor apply(const Tensor& x) override { return ag::mul(x, w.get()); }
};
struct Shift : Op {
  ag::ParamRef b;
  explicit Shift(double s) { b = register_param("b", Tensor::full({1}, s, DType::f64)); }
  Tensor apply(const Tensor& x) override { return ag::add(x, b.get()); }
};
struct Host : ag::Module {
  ag::Slot<Op> op;
  ag::ParamRef gain;
  Host() {
    op = register_slot<Op>("op", std::make_shared<Scale>(3.0));
    gain = register_param("gain", Tensor::full({2}, 1.0, DType::f64));
  }
  // sum(op(x) * gain)
  Tensor forward(const Tensor& x) { return ag::sum(ag::mul(op->apply(x), gain.get())); }
};

}  // namespace

TEST(Module, SlotFollowsReplaceModule) {
  Host h;
  Tensor x = Tensor::from_vector<double>({1.0, 2.0}, {2});
  std::shared_ptr<Op> old = h.op.shared();
  EXPECT_DOUBLE_EQ(h.forward(x).item(), 3.0 * (1 + 2));
  auto shift = std::make_shared<Shift>(10.0);
  h.replace_module("op", shift);
  EXPECT_EQ(h.op.get(), shift.get());
  Tensor y = h.forward(x);
  EXPECT_DOUBLE_EQ(y.item(), (1 + 10) + (2 + 10));
  y.backward();
  // The new module's parameter is on the tape (d/db = sum(gain) = 2); the old one is not.
  ASSERT_TRUE(shift->b->grad().defined());
  EXPECT_DOUBLE_EQ(shift->b->grad().item(), 2.0);
  EXPECT_FALSE(old->parameter("w").grad().defined());
  EXPECT_EQ(h.named_parameters().back().first, "op.b");

  // A slot only takes its interface; the error names the slot and what it expects.
  try {
    h.replace_module("op", std::make_shared<Proj>(1, 1, 1, false));
    FAIL() << "a Proj went into an Op slot";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'op'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("Op"), std::string::npos) << e.what();
  }
  EXPECT_EQ(h.op.get(), shift.get());
}

TEST(Module, ParamRefFollowsReplaceParameterIncludingAShard) {
  Host h;
  Tensor x = Tensor::from_vector<double>({1.0, 2.0}, {2});
  Tensor old_gain = h.gain.get();
  // A tensor of another shape (a shard keeps the number of dims): [1] broadcasts over x.
  Tensor shard = Tensor::full({1}, 0.5, DType::f64);
  h.replace_parameter("gain", shard);
  EXPECT_TRUE(h.gain.get().is_same(shard));
  EXPECT_TRUE(shard.requires_grad());
  Tensor y = h.forward(x);
  EXPECT_DOUBLE_EQ(y.item(), 0.5 * 3.0 * (1 + 2));
  y.backward();
  ASSERT_TRUE(shard.grad().defined());
  EXPECT_DOUBLE_EQ(shard.grad().item(), 3.0 * (1 + 2));
  EXPECT_FALSE(old_gain.grad().defined());
  // Another number of dims is refused, naming the parameter.
  try {
    h.replace_parameter("gain", Tensor::full({1, 1}, 1.0, DType::f64));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'gain'"), std::string::npos) << e.what();
  }
  // A default ParamRef is undefined, not a crash.
  ag::ParamRef none;
  EXPECT_FALSE(none.defined());
  EXPECT_FALSE(none.get().defined());
}
