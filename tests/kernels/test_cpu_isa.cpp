// The f32 row loops of kernels/cpu/isa.h run compiled for baseline x86-64, AVX2 or AVX-512,
// whichever the CPU has. Every level must give the same bits (no FMA contraction, no
// reassociation): each kernel built on those rows runs at every level this CPU supports
// and is compared bit for bit with the baseline level. On a CPU without AVX2 / AVX-512 the
// higher levels clamp to what it has and the comparisons hold trivially (the test says so).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/rng.h"
#include "kernels/cpu/isa.h"
#include "kernels/ops.h"

namespace {

using namespace lathe;
using namespace lathe::kernels;
namespace isa = lathe::kernels::cpu::isa;

Tensor randn(const Shape& s, uint64_t seed, double scale = 1.0) {
  Generator g(seed);
  Tensor x = Tensor::randn(s, g, DType::f64);
  scale_(x, scale);
  return x.to(DType::f32);
}

// Bitwise equality of two f32 tensors, naming the first differing element.
::testing::AssertionResult same_bits(const Tensor& a, const Tensor& b, const std::string& what) {
  if (a.shape() != b.shape()) return ::testing::AssertionFailure() << what << ": shapes differ";
  const Tensor ac = a.contiguous(), bc = b.contiguous();
  const auto* x = ac.data<float>();
  const auto* y = bc.data<float>();
  for (int64_t i = 0; i < ac.numel(); ++i)
    if (std::memcmp(&x[i], &y[i], sizeof(float)) != 0)
      return ::testing::AssertionFailure() << what << ": element " << i << " is " << x[i] << " vs " << y[i];
  return ::testing::AssertionSuccess();
}

// Runs f at each level (restoring the level after) and returns its results per level.
template <typename F>
std::vector<std::vector<Tensor>> at_each_level(F f) {
  std::vector<std::vector<Tensor>> r;
  const isa::Level saved = isa::level();
  for (isa::Level l : {isa::Level::base, isa::Level::avx2, isa::Level::avx512}) {
    isa::set_level_for_testing(l);
    r.push_back(f());
  }
  isa::set_level_for_testing(saved);
  return r;
}

void expect_levels_agree(const std::vector<std::vector<Tensor>>& r, const std::vector<std::string>& names,
                         const std::string& what) {
  const char* lv[] = {"base", "avx2", "avx512"};
  for (size_t l = 1; l < r.size(); ++l)
    for (size_t i = 0; i < names.size(); ++i)
      EXPECT_TRUE(same_bits(r[l][i], r[0][i], what + " " + names[i] + " at " + lv[l] + " vs base"));
}

TEST(CpuIsa, LevelsClampToWhatTheCpuHas) {
  const isa::Level saved = isa::level();
  EXPECT_EQ(isa::set_level_for_testing(isa::Level::avx512), saved);
  EXPECT_EQ(isa::level(), isa::supported());
  isa::set_level_for_testing(isa::Level::base);
  EXPECT_EQ(isa::level(), isa::Level::base);
  isa::set_level_for_testing(saved);
  std::printf("this CPU: %s\n", isa::name(isa::supported()));
}

TEST(CpuIsa, GeluLinearSameBitsAtEveryLevel) {
  // Odd widths: every level's vector loop ends in a remainder.
  for (int64_t N : {int64_t(37), int64_t(200)}) {
    Tensor x = randn({3, 41, 29}, 1), w = randn({N, 29}, 2), b = randn({N}, 3), dy = randn({3, 41, N}, 4);
    auto r = at_each_level([&] {
      Tensor pre;
      Tensor y = linear(x, w, b, Activation::gelu_tanh, &pre);
      LinearGrads g = linear_backward(dy, x, w, pre, Activation::gelu_tanh, true, true, true);
      return std::vector<Tensor>{y, pre, g.dx, g.dw, g.db};
    });
    expect_levels_agree(r, {"y", "pre", "dx", "dw", "db"}, "linear N " + std::to_string(N));
  }
}

TEST(CpuIsa, UnaryOpsSameBitsAtEveryLevel) {
  // Wide inputs (exp under- and overflow), an odd row length, and a strided view that takes
  // the generic loop: the f32 rows must agree with it too.
  Tensor x = randn({7, 203}, 31, 30.0), g = randn({7, 203}, 32);
  for (UnaryOp op : {UnaryOp::exp, UnaryOp::sigmoid, UnaryOp::silu, UnaryOp::gelu_tanh}) {
    auto r = at_each_level([&] {
      std::vector<Tensor> out{unary(op, x), unary(op, x.transpose(0, 1)).transpose(0, 1)};
      if (op != UnaryOp::exp) {
        out.push_back(unary_backward(op, x, Tensor(), g));
        out.push_back(unary_backward(op, x.transpose(0, 1), Tensor(), g.transpose(0, 1)).transpose(0, 1));
      } else {
        out.push_back(out[0]);
        out.push_back(out[1]);
      }
      return out;
    });
    const std::string what = unary_name(op);
    expect_levels_agree(r, {"forward", "forward strided", "backward", "backward strided"}, what);
    // The unit-stride rows and the generic strided loop give the same bits.
    for (const auto& at_level : r) {
      EXPECT_TRUE(same_bits(at_level[0], at_level[1], what + " rows vs strided loop"));
      EXPECT_TRUE(same_bits(at_level[2], at_level[3], what + " backward rows vs strided loop"));
    }
  }
}

TEST(CpuIsa, SwigluSameBitsAtEveryLevel) {
  Tensor g = randn({9, 203}, 33, 20.0), u = randn({9, 203}, 34), gy = randn({9, 203}, 35);
  auto r = at_each_level([&] {
    SwigluGrads b = swiglu_backward(gy, g, u);
    SwigluGrads bs = swiglu_backward(gy.transpose(0, 1), g.transpose(0, 1), u.transpose(0, 1));
    return std::vector<Tensor>{swiglu(g, u), swiglu(g.transpose(0, 1), u.transpose(0, 1)).transpose(0, 1),
                               b.dgate, bs.dgate.transpose(0, 1), b.dup, bs.dup.transpose(0, 1)};
  });
  expect_levels_agree(r, {"forward", "forward strided", "dgate", "dgate strided", "dup", "dup strided"}, "swiglu");
  for (const auto& at_level : r)
    for (int k : {0, 2, 4}) EXPECT_TRUE(same_bits(at_level[k], at_level[k + 1], "swiglu rows vs strided loop"));
}

TEST(CpuIsa, AttentionSameBitsAtEveryLevel) {
  struct Case {
    int64_t H, Hkv, T, S, D, window;
    bool causal;
  };
  // Several key blocks, a causal limit inside blocks, a sliding window, GQA, odd head dims.
  for (const Case& c : {Case{4, 2, 150, 200, 24, 0, true}, Case{2, 1, 200, 200, 16, 70, true},
                        Case{2, 2, 70, 129, 33, 0, false}}) {
    Tensor q = randn({2, c.H, c.T, c.D}, 11), k = randn({2, c.Hkv, c.S, c.D}, 12);
    Tensor v = randn({2, c.Hkv, c.S, c.D}, 13), go = randn({2, c.H, c.T, c.D}, 14);
    const double scale = 1.0 / std::sqrt(double(c.D));
    auto r = at_each_level([&] {
      AttentionOut o = attention(q, k, v, c.causal, scale, c.window);
      AttentionGrads g = attention_backward(go, q, k, v, o.out, o.lse, c.causal, scale, c.window);
      return std::vector<Tensor>{o.out, o.lse, g.dq, g.dk, g.dv};
    });
    expect_levels_agree(r, {"out", "lse", "dq", "dk", "dv"},
                        "attention T " + std::to_string(c.T) + " S " + std::to_string(c.S));
  }
}

TEST(CpuIsa, CrossEntropySameBitsAtEveryLevel) {
  // Logits spread wide enough that exp under- and overflows relative to the row max.
  Tensor logits = randn({67, 1003}, 21, 8.0);
  std::vector<int64_t> t(67);
  for (int64_t i = 0; i < 67; ++i) t[i] = i % 5 == 0 ? -100 : (i * 37) % 1003;
  Tensor targets = Tensor::from_vector(t, {67});
  for (double eps : {0.0, 0.1}) {
    auto r = at_each_level([&] {
      CrossEntropyOut o = cross_entropy(logits, targets, -100, eps);
      Tensor g = cross_entropy_backward(logits, targets, o.lse, 1.0, o.count, -100, eps);
      return std::vector<Tensor>{o.loss, o.lse, g};
    });
    expect_levels_agree(r, {"loss", "lse", "grad"}, "cross_entropy eps " + std::to_string(eps));
  }
}

}  // namespace
