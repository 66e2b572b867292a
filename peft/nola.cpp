#include "peft/nola.h"

#include <cmath>

#include "autograd/function.h"
#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "core/error.h"
#include "core/rng.h"
#include "kernels/ops.h"
#include "models/autocast.h"

namespace lathe::peft {

namespace ag = lathe::autograd;

uint32_t nola_module_key(const std::string& name) {
  uint32_t h = 2166136261u;
  for (unsigned char c : name) {
    h ^= c;
    h *= 16777619u;
  }
  return h;
}

uint64_t nola_basis_seed(const NolaKey& key, NolaFactor factor, uint32_t index) {
  // One Philox block with the run's seed as the key and (module, factor, index, tag) as the
  // counter: distinct bases get independent seeds.
  const auto r = philox4x32_10({key.module, static_cast<uint32_t>(factor), index, 0x4E4F4C41u /* "NOLA" */},
                               {static_cast<uint32_t>(key.seed), static_cast<uint32_t>(key.seed >> 32)});
  return (static_cast<uint64_t>(r[0]) << 32) | r[1];
}

Tensor nola_basis(const NolaKey& key, NolaFactor factor, uint32_t index, const Shape& shape, double scale, DType dt,
                  Device dev) {
  Generator g(nola_basis_seed(key, factor, index));
  Tensor u = kernels::affine(Tensor::rand(shape, g, DType::f32, dev), 2 * scale, -scale);
  return dt == DType::f32 ? u : u.to(dt);
}

namespace {

// Bases [first, first + n) of a factor as rows of an [n, numel] matrix.
Tensor basis_chunk(const NolaKey& key, NolaFactor factor, int64_t first, int64_t n, const Shape& shape, double scale,
                   DType dt, Device dev) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  Tensor c = Tensor::empty({n, numel}, dt, dev);
  for (int64_t i = 0; i < n; ++i)
    c.select(0, i).copy_(
        nola_basis(key, factor, static_cast<uint32_t>(first + i), {numel}, scale, dt, dev));
  return c;
}

}  // namespace

Tensor nola_combine(const Tensor& coef, const NolaKey& key, NolaFactor factor, const Shape& shape, int64_t chunk) {
  LATHE_REQUIRE(coef.dim() == 1 && coef.numel() > 0) << "NOLA: the coefficients must be a non-empty vector";
  LATHE_REQUIRE(chunk > 0) << "NOLA: chunk must be > 0 (got " << chunk << ")";
  const int64_t k = coef.numel();
  // The reference's basis scale: U(-1, 1) / sqrt(k).
  const double scale = 1.0 / std::sqrt(static_cast<double>(k));
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const DType dt = coef.dtype();
  const Device dev = coef.device();
  Tensor out = Tensor::zeros({1, numel}, dt, dev);
  {
    ag::NoGradGuard ng;
    const Tensor c2 = coef.detach().reshape({1, k});
    for (int64_t c0 = 0; c0 < k; c0 += chunk) {
      const int64_t n = std::min(chunk, k - c0);
      const Tensor basis = basis_chunk(key, factor, c0, n, shape, scale, dt, dev);
      kernels::add_(out, kernels::matmul(c2.narrow(1, c0, n), basis));
    }
  }
  out = out.reshape(shape);
  return ag::record("nola_combine", out, {coef},
                    [key, factor, shape, chunk, k, scale, numel, dt, dev](const std::vector<Tensor>& g,
                                                                          const std::vector<bool>&) {
                      // grad coef_i = <grad out, basis_i>, the bases regenerated chunk by chunk.
                      const Tensor gf = g[0].contiguous().reshape({numel, 1});
                      Tensor gc = Tensor::empty({k}, dt, dev);
                      for (int64_t c0 = 0; c0 < k; c0 += chunk) {
                        const int64_t n = std::min(chunk, k - c0);
                        const Tensor basis = basis_chunk(key, factor, c0, n, shape, scale, dt, dev);
                        gc.narrow(0, c0, n).copy_(kernels::matmul(basis, gf).reshape({n}));
                      }
                      return std::vector<Tensor>{gc};
                    });
}

NolaLinear::NolaLinear(std::shared_ptr<models::LinearLayer> base, const LoraOptions& opts, const NolaOptions& nola,
                       uint64_t seed, const std::string& module_name, Generator* dropout_gen)
    : LoraLinear(std::move(base), opts, dropout_gen, NoFactors{}), nola_(nola) {
  LATHE_REQUIRE(nola.num_basis_A > 0 && nola.num_basis_B > 0)
      << "NOLA: peft.nola_num_basis_a and peft.nola_num_basis_b must be > 0 (got " << nola.num_basis_A << ", "
      << nola.num_basis_B << ")";
  LATHE_REQUIRE(nola.num_basis_A <= 0x3fffffff && nola.num_basis_B <= 0x3fffffff) << "NOLA: too many bases";
  LATHE_REQUIRE(nola.chunk > 0) << "NOLA: peft.nola_chunk must be > 0 (got " << nola.chunk << ")";
  key_.seed = seed;
  key_.module = nola_module_key(module_name);
  const Device dev = base_weight().device();
  coef_A_ = register_parameter("nola_coef_A", Tensor::zeros({nola.num_basis_A}, DType::f32, dev));
  coef_B_ = register_parameter("nola_coef_B", Tensor::zeros({nola.num_basis_B}, DType::f32, dev));
}

void NolaLinear::set_shard(int64_t out_full, int64_t out_start, int64_t in_full, int64_t in_start) {
  LATHE_REQUIRE(out_start >= 0 && out_start + out_features() <= out_full && in_start >= 0 &&
                in_start + in_features() <= in_full)
      << "NOLA: the shard [" << out_start << ", +" << out_features() << ") x [" << in_start << ", +" << in_features()
      << ") does not fit the whole layer " << out_full << " x " << in_full;
  out_full_ = out_full;
  out_start_ = out_start;
  in_full_ = in_full;
  in_start_ = in_start;
}

Tensor NolaLinear::A0() const {
  // kaiming_uniform(a=sqrt(5)) as LoRA's A: U(-1/sqrt(in), 1/sqrt(in)), of the whole layer.
  const int64_t in = in_full_ > 0 ? in_full_ : in_features();
  Tensor a0 = nola_basis(key_, NolaFactor::A0, 0, {rank(), in}, 1.0 / std::sqrt(static_cast<double>(in)),
                         coef_A_.dtype(), coef_A_.device());
  return in_full_ > 0 ? a0.narrow(1, in_start_, in_features()).contiguous() : a0;
}

Tensor NolaLinear::A_diff() const {
  const int64_t in = in_full_ > 0 ? in_full_ : in_features();
  Tensor a = nola_combine(coef_A_, key_, NolaFactor::A, {rank(), in}, nola_.chunk);
  if (in_full_ > 0) a = ag::narrow(a, 1, in_start_, in_features());
  return ag::add(A0(), a);
}

Tensor NolaLinear::B_diff() const {
  const int64_t out = out_full_ > 0 ? out_full_ : out_features();
  Tensor b = nola_combine(coef_B_, key_, NolaFactor::B, {out, rank()}, nola_.chunk);
  return out_full_ > 0 ? ag::narrow(b, 0, out_start_, out_features()) : b;
}

Tensor NolaLinear::forward(const Tensor& x_in) const {
  // Tensor parallelism: the same math on this rank's slices (TensorParallelRegion, peft/lora.h).
  const TensorParallelRegion* tp = tensor_parallel_region();
  const Tensor x = tp ? tp->enter(x_in) : x_in;
  auto leave = [tp](const Tensor& y) { return tp ? tp->leave(y) : y; };
  Tensor y = base()->forward(x);
  if (merged()) return leave(y);
  // Under Autocast the factors are used in the compute dtype (x is already in it).
  const Tensor h = ag::matmul(adapter_input(x, coef_A_.dtype()), models::autocast(A_diff()), false, true);  // [..., r]
  return leave(add_branch(y, ag::mul(ag::matmul(h, models::autocast(B_diff()), false, true), scaling())));
}

Tensor NolaLinear::lora_A() const {
  ag::NoGradGuard ng;
  return A_diff().to(DType::f32);
}

Tensor NolaLinear::lora_B() const {
  ag::NoGradGuard ng;
  return B_diff().to(DType::f32);
}

Tensor NolaLinear::delta_weight() const {
  ag::NoGradGuard ng;
  Tensor d = kernels::matmul(lora_B(), lora_A());
  kernels::scale_(d, scaling());
  return d;
}

LoraFactors NolaLinear::lora_factors() const {
  LoraFactors f;
  f.A = lora_A();
  f.B = lora_B();
  f.r = rank();
  f.alpha = alpha();
  return f;
}

int64_t NolaLinear::adapter_parameters() const {
  int64_t n = 0;
  for (const Tensor& c : {coef_A_, coef_B_})
    if (c.requires_grad()) n += c.numel();
  return n;
}

}  // namespace lathe::peft
