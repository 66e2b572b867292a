// Tiny models and comparisons shared by the peft tests.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <memory>
#include <vector>

#include "autograd/grad_mode.h"
#include "bench/profiling_backend.h"
#include "kernels/backend.h"
#include "core/tensor.h"
#include "models/model.h"

namespace lathe::test {

inline models::ModelSpec tiny_gpt2() {
  models::ModelSpec s;
  s.arch = models::Arch::gpt2;
  s.vocab_size = 61;
  s.n_layer = 2;
  s.n_head = 4;
  s.d_model = 32;
  s.max_seq_len = 16;
  return s;
}

inline models::ModelSpec tiny_llama(bool tied = false) {
  models::ModelSpec s;
  s.arch = models::Arch::llama;
  s.vocab_size = 67;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_kv_head = 2;
  s.d_model = 32;
  s.d_ff = 48;
  s.max_seq_len = 16;
  s.bias = false;
  s.tie_embeddings = tied;
  return s;
}

inline Tensor test_ids(int64_t B, int64_t T, int64_t V, uint64_t seed = 7) {
  std::vector<int64_t> v(static_cast<size_t>(B * T));
  uint64_t x = seed * 2654435761u + 1;
  for (auto& t : v) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    t = static_cast<int64_t>((x >> 33) % static_cast<uint64_t>(V));
  }
  return Tensor::from_vector<int64_t>(v, {B, T});
}

inline Tensor eval_logits(models::CausalLM& m, const Tensor& ids) {
  autograd::NoGradGuard ng;
  const bool was = m.is_training();
  m.eval();
  Tensor y = m.forward(ids).to(DType::f64).contiguous();
  m.train(was);
  return y;
}

inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  std::vector<double> x = a.to(DType::f64).contiguous().to_vector<double>();
  std::vector<double> y = b.to(DType::f64).contiguous().to_vector<double>();
  double m = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

inline bool bit_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  return a.contiguous().to_vector<double>() == b.contiguous().to_vector<double>();
}

// Every adapter's B filled with random values (B = 0 at init makes every check trivial).
inline void randomize(const Tensor& t, uint64_t seed, double scale) {
  Generator g(seed);
  Tensor r = Tensor::randn(t.shape(), g, DType::f32);
  std::vector<float> v = r.to_vector<float>();
  for (auto& x : v) x = static_cast<float>(x * scale);
  t.copy_(Tensor::from_vector<float>(v, t.shape()));
}

// Runs f with every CPU kernel call counted; returns the counts by kernel name (absent: 0).
inline std::map<std::string, int64_t> count_kernels(const std::function<void()>& f) {
  kernels::Backend& cpu = kernels::backend(Device::cpu());
  bench::ProfilingBackend prof(cpu, Device::cpu());
  kernels::register_backend(DeviceType::cpu, &prof);
  try {
    f();
  } catch (...) {
    kernels::register_backend(DeviceType::cpu, &cpu);
    throw;
  }
  kernels::register_backend(DeviceType::cpu, &cpu);
  std::map<std::string, int64_t> n;
  for (const auto& [k, st] : prof.stats()) n[k] = st.calls;
  return n;
}

}  // namespace lathe::test
