// CUDA dropout and fused AdamW (single-tensor and multi-tensor), matching kernels/cpu/misc.cpp
// bit for bit:
// - dropout draws element i's uniform from Philox stream value seed:offset+i (value j is word
//   j % 4 of block j / 4, core/rng.h's Generator::at), so the mask is the CPU's mask.
// - AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, with
//   Adam's bias corrections) computes each element in double with the CPU's order of
//   operations, every product, quotient and sum rounded on its own (the __d*_rn intrinsics
//   keep nvcc from contracting a*b+c into an FMA, which the CPU build never does), then
//   stores f32.
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/multi_tensor.h"
#include "kernels/optim_math.h"

namespace lathe::kernels::cuda {

namespace {

int dev_of(const Tensor& t) { return t.device().index; }

// ---- dropout -------------------------------------------------------------------------------

// Thread per Philox block b (stream values 4b .. 4b+3), covering the elements i = 4b + w -
// offset that fall in [0, n). One Philox evaluation serves four elements.
template <typename T, bool kContig>
__global__ void dropout_kernel(const T* __restrict__ x, Indexer xi, T* __restrict__ y, uint8_t* __restrict__ mask,
                               int64_t n, uint64_t offset, uint64_t first_block, int64_t nblocks, uint2 key, double p,
                               acc_t<T> scale) {
  using A = acc_t<T>;
  LATHE_CUDA_GRID_STRIDE(g, nblocks) {
    const uint64_t b = first_block + static_cast<uint64_t>(g);
    const uint4 r = philox4x32_10(make_uint4(static_cast<uint32_t>(b), static_cast<uint32_t>(b >> 32), 0u, 0u), key);
    const uint32_t words[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const uint64_t j = 4 * b + static_cast<uint64_t>(w);
      if (j < offset || j - offset >= static_cast<uint64_t>(n)) continue;
      const int64_t i = static_cast<int64_t>(j - offset);
      // The comparison in double, as the CPU (p need not be an f32 value).
      const bool keep = static_cast<double>(uint_to_unit_float(words[w])) >= p;
      mask[i] = keep ? 1 : 0;
      const A v = ld(x[kContig ? i : xi.offset(i)]);
      y[i] = st<T>(keep ? A(v * scale) : A(0));
    }
  }
}

// ---- AdamW ------------------------------------------------------------------------------------

// The element math (both AdamW variants) is kernels/optim_math.h, shared with the CPU kernels
// (kernels/cpu/optim.cpp): every operation a correctly rounded intrinsic, so both agree bit for bit.
using AdamArgs = optim_math::AdamScalars;

template <bool kGradContig, bool HF>
__global__ void adamw_kernel(float* __restrict__ param, const float* __restrict__ grad, Indexer gi,
                             float* __restrict__ m, float* __restrict__ v, int64_t n, AdamArgs a) {
  LATHE_CUDA_GRID_STRIDE(i, n) {
    float pv = param[i], mv = m[i], vv = v[i];
    optim_math::adam_element<HF>(pv, mv, vv, grad[kGradContig ? i : gi.offset(i)], a);
    param[i] = pv;
    m[i] = mv;
    v[i] = vv;
  }
}

// ---- multi-tensor AdamW ------------------------------------------------------------------------
//
// The launch's tensor table travels as a kernel parameter (about 2.4 KB, under the 4 KB
// limit): no device buffer to fill, hence no host-to-device copy (which, from pageable
// memory, may synchronise) and nothing to keep alive until the kernel has run. Each tensor
// is cut into chunks of kChunk elements; chunk_start[k] is the first chunk of tensor k, and
// a block finds the tensor of its chunk by binary search.

constexpr int kMtMaxTensors = 48;
constexpr int64_t kChunk = 16384;
constexpr int kMtThreads = 512;

struct MtTable {
  float* p[kMtMaxTensors];
  const void* g[kMtMaxTensors];
  float* m[kMtMaxTensors];
  float* v[kMtMaxTensors];
  int64_t n[kMtMaxTensors];
  int64_t chunk_start[kMtMaxTensors + 1];  // chunk_start[count] = total chunks
  uint8_t g_bf16[kMtMaxTensors];
  int count;
};
static_assert(sizeof(MtTable) + sizeof(AdamArgs) < 4000, "kernel parameters must stay under 4 KB");

template <bool HF>
__global__ void __launch_bounds__(kMtThreads) adamw_multi_kernel(const __grid_constant__ MtTable t, AdamArgs a) {
  const int64_t total = t.chunk_start[t.count];
  for (int64_t c = blockIdx.x; c < total; c += gridDim.x) {
    // Largest k with chunk_start[k] <= c (tensors with no chunks have equal starts and are
    // skipped by taking the last).
    int lo = 0, hi = t.count - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (t.chunk_start[mid] <= c) lo = mid;
      else hi = mid - 1;
    }
    const int k = lo;
    const int64_t begin = (c - t.chunk_start[k]) * kChunk;
    const int64_t end = begin + kChunk < t.n[k] ? begin + kChunk : t.n[k];
    float* __restrict__ p = t.p[k];
    float* __restrict__ m = t.m[k];
    float* __restrict__ v = t.v[k];
    if (t.g_bf16[k]) {
      const bf16* __restrict__ g = static_cast<const bf16*>(t.g[k]);
      for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
        float pv = p[i], mv = m[i], vv = v[i];
        optim_math::adam_element<HF>(pv, mv, vv, __bfloat162float(g[i]), a);
        p[i] = pv;
        m[i] = mv;
        v[i] = vv;
      }
    } else {
      const float* __restrict__ g = static_cast<const float*>(t.g[k]);
      for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
        float pv = p[i], mv = m[i], vv = v[i];
        optim_math::adam_element<HF>(pv, mv, vv, g[i], a);
        p[i] = pv;
        m[i] = mv;
        v[i] = vv;
      }
    }
  }
}

}  // namespace

// ---- entry points ------------------------------------------------------------------------------

void dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, const DropoutOut& out) {
  const int64_t n = x.numel();
  if (n == 0) return;
  LATHE_CHECK(out.y.is_contiguous() && out.mask.is_contiguous()) << "dropout: outputs must be contiguous";
  const int dev = dev_of(x);
  set_device(dev);
  cudaStream_t s = stream(dev);
  const uint2 key = make_uint2(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const uint64_t first_block = offset >> 2;
  const int64_t nblocks = static_cast<int64_t>(((offset + static_cast<uint64_t>(n) - 1) >> 2) - first_block + 1);
  const bool contig = x.is_contiguous();
  const Indexer xi = contig ? Indexer() : make_indexer(x);
  LATHE_CUDA_DISPATCH_FLOAT("dropout", x.dtype(), T, {
    using A = acc_t<T>;
    const A scale = p >= 1.0 ? A(0) : A(1.0 / (1.0 - p));
    if (contig) {
      dropout_kernel<T, true><<<blocks_for(nblocks), kThreads, 0, s>>>(
          ptr<const T>(x), xi, ptr<T>(out.y), ptr<uint8_t>(out.mask), n, offset, first_block, nblocks, key, p, scale);
    } else {
      dropout_kernel<T, false><<<blocks_for(nblocks), kThreads, 0, s>>>(
          ptr<const T>(x), xi, ptr<T>(out.y), ptr<uint8_t>(out.mask), n, offset, first_block, nblocks, key, p, scale);
    }
  });
  LATHE_CUDA_LAUNCH_CHECK("dropout");
}

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, double lr, double beta1,
                double beta2, double eps, double weight_decay, int64_t step, AdamVariant variant) {
  const int64_t n = param.numel();
  if (n == 0) return;
  LATHE_CHECK(param.dtype() == DType::f32 && grad.dtype() == DType::f32 && m.dtype() == DType::f32 &&
              v.dtype() == DType::f32)
      << "adamw_step: param, grad, m and v must be f32";
  LATHE_CHECK(param.is_contiguous() && m.is_contiguous() && v.is_contiguous())
      << "adamw_step: param, m and v must be contiguous";
  const int dev = dev_of(param);
  set_device(dev);
  cudaStream_t s = stream(dev);
  const AdamArgs a = optim_math::adam_scalars(lr, beta1, beta2, eps, weight_decay, step);
  const bool hf = variant == AdamVariant::hf;
  const bool gc = grad.is_contiguous();
  const Indexer gi = gc ? Indexer() : make_indexer(grad);
  auto* kern = gc ? (hf ? adamw_kernel<true, true> : adamw_kernel<true, false>)
                  : (hf ? adamw_kernel<false, true> : adamw_kernel<false, false>);
  kern<<<blocks_for(n), kThreads, 0, s>>>(ptr<float>(param), ptr<const float>(grad), gi, ptr<float>(m), ptr<float>(v),
                                          n, a);
  LATHE_CUDA_LAUNCH_CHECK("adamw_step");
}

void adamw_multi_tensor(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                        const std::vector<Tensor>& ms, const std::vector<Tensor>& vs, double lr, double beta1,
                        double beta2, double eps, double weight_decay, int64_t step, AdamVariant variant) {
  const char* op = "adamw_multi_tensor";
  LATHE_CHECK(grads.size() == params.size() && ms.size() == params.size() && vs.size() == params.size())
      << op << ": list lengths differ: " << params.size() << " params, " << grads.size() << " grads, " << ms.size()
      << " m, " << vs.size() << " v";
  LATHE_CHECK(step >= 1) << op << ": step must be >= 1 (bias correction), got " << step;
  LATHE_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1)
      << op << ": betas must be in [0, 1), got " << beta1 << ", " << beta2;
  if (params.empty()) return;
  const Device dev = params[0].device();
  LATHE_CHECK(dev.is_cuda()) << op << ": tensors must be on a cuda device, got " << dev.str();
  for (size_t k = 0; k < params.size(); ++k) {
    const Tensor* all[4] = {&params[k], &grads[k], &ms[k], &vs[k]};
    const char* names[4] = {"param", "grad", "m", "v"};
    for (int q = 0; q < 4; ++q) {
      const Tensor& t = *all[q];
      LATHE_CHECK(t.defined()) << op << ": " << names[q] << " " << k << " is undefined";
      LATHE_CHECK(t.device() == dev) << op << ": " << names[q] << " " << k << " is on " << t.device().str()
                                     << ", param 0 on " << dev.str();
      LATHE_CHECK(t.is_contiguous()) << op << ": " << names[q] << " " << k << " " << t.shape_str()
                                     << " must be contiguous";
      LATHE_CHECK(t.numel() == params[k].numel()) << op << ": " << names[q] << " " << k << " " << t.shape_str()
                                                  << " does not match param " << params[k].shape_str();
      const bool ok = t.dtype() == DType::f32 || (q == 1 && t.dtype() == DType::bf16);
      LATHE_CHECK(ok) << op << ": " << names[q] << " " << k << " must be f32" << (q == 1 ? " or bf16" : "")
                      << ", got " << dtype_name(t.dtype());
    }
  }
  set_device(dev.index);
  cudaStream_t s = stream(dev.index);
  const AdamArgs a = optim_math::adam_scalars(lr, beta1, beta2, eps, weight_decay, step);
  const bool hf = variant == AdamVariant::hf;
  MtTable t{};
  auto flush = [&]() {
    if (t.count == 0) return;
    const int64_t total = t.chunk_start[t.count];
    if (total > 0) {
      const unsigned grid = static_cast<unsigned>(total < 65535LL * 32 ? total : 65535LL * 32);
      if (hf) adamw_multi_kernel<true><<<grid, kMtThreads, 0, s>>>(t, a);
      else adamw_multi_kernel<false><<<grid, kMtThreads, 0, s>>>(t, a);
      LATHE_CUDA_LAUNCH_CHECK(op);
    }
    t = MtTable{};
  };
  for (size_t k = 0; k < params.size(); ++k) {
    const int64_t n = params[k].numel();
    if (n == 0) continue;
    const int i = t.count;
    t.p[i] = ptr<float>(params[k]);
    t.g[i] = grads[k].raw_data();
    t.m[i] = ptr<float>(ms[k]);
    t.v[i] = ptr<float>(vs[k]);
    t.n[i] = n;
    t.g_bf16[i] = grads[k].dtype() == DType::bf16 ? 1 : 0;
    t.chunk_start[i + 1] = t.chunk_start[i] + (n + kChunk - 1) / kChunk;
    t.count = i + 1;
    if (t.count == kMtMaxTensors) flush();
  }
  flush();
}

}  // namespace lathe::kernels::cuda
