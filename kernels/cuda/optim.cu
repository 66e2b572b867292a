// CUDA optimizer kernels beyond AdamW (misc.cu): the 8-bit blockwise states and SGD-SaI, with
// the element math of kernels/optim_math.h, so results equal the CPU kernels
// (kernels/cpu/optim.cpp) bit for bit.
//
// 8-bit: one CUDA block per quantisation block (bitsandbytes' layout). The two maps travel
// as a kernel parameter (1 KB each, under the 4 KB limit: no device buffer, no copy) and are
// staged in shared memory, where the binary search of every element reads them. A block's
// absmax is a shared-memory max reduction; max is exact in any order, so it equals the CPU's.
#include <algorithm>
#include <cmath>

#include "kernels/blockwise8.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/optim_math.h"

namespace lathe::kernels::cuda {

namespace om = optim_math;

namespace {

struct Map8 {
  float v[256];
};

Map8 map8(bool is_signed) {
  Map8 m;
  const auto& t = quant_map8(is_signed);
  std::copy(t.begin(), t.end(), m.v);
  return m;
}

constexpr int kQThreads = 256;

// Threads per CUDA block for a quantisation block of `block` elements (a power of two >= 64).
int qthreads(int64_t block) { return static_cast<int>(std::min<int64_t>(block, kQThreads)); }

// Max over the block's threads of v (blockDim.x a power of two <= kQThreads).
__device__ float block_max(float v, float* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + s]);
    __syncthreads();
  }
  const float r = red[0];
  __syncthreads();
  return r;
}

// Elements per thread: block / blockDim.x, at most 4096 / 64.
constexpr int kMaxPer = 64;

__global__ void __launch_bounds__(kQThreads)
    quantize8_kernel(const float* __restrict__ x, uint8_t* __restrict__ codes, float* __restrict__ absmax, int64_t n,
                     int64_t block, const __grid_constant__ Map8 map, bool is_signed) {
  __shared__ float table[256];
  __shared__ float red[kQThreads];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) table[i] = map.v[i];
  __syncthreads();
  for (int64_t b = blockIdx.x; b * block < n; b += gridDim.x) {
    const int64_t lo = b * block, hi = min(n, lo + block);
    float am = 0.0f;
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) am = fmaxf(am, fabsf(x[i]));
    am = block_max(am, red);
    if (threadIdx.x == 0) absmax[b] = am;
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) codes[i] = om::quant8_encode(table, x[i], am, is_signed);
  }
}

__global__ void dequantize8_kernel(const uint8_t* __restrict__ codes, const float* __restrict__ absmax,
                                   float* __restrict__ out, int64_t n, int64_t block, const __grid_constant__ Map8 map) {
  __shared__ float table[256];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) table[i] = map.v[i];
  __syncthreads();
  LATHE_CUDA_GRID_STRIDE(i, n) { out[i] = om::quant8_decode(table, codes[i], absmax[i / block]); }
}

// The 8-bit Adam step of one quantisation block per CUDA block (kernels/cpu/optim.cpp's
// adam8_block, element for element). Each thread keeps its elements' new m and v in
// registers between the absmax reduction and the requantisation.
template <bool HF>
__global__ void __launch_bounds__(kQThreads)
    adam8_kernel(float* __restrict__ p, const float* __restrict__ g, uint8_t* __restrict__ c1,
                 float* __restrict__ a1, uint8_t* __restrict__ c2, float* __restrict__ a2, int64_t n, int64_t block,
                 om::AdamScalars a, const __grid_constant__ Map8 ms, const __grid_constant__ Map8 mu) {
  __shared__ float qs[256], qu[256];
  __shared__ float red[kQThreads];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) {
    qs[i] = ms.v[i];
    qu[i] = mu.v[i];
  }
  __syncthreads();
  const int per = static_cast<int>(block / blockDim.x);
  for (int64_t b = blockIdx.x; b * block < n; b += gridDim.x) {
    const int64_t lo = b * block;
    const float old1 = a1[b], old2 = a2[b];
    float mv[kMaxPer], vv[kMaxPer];
    float am1 = 0.0f, am2 = 0.0f;
    for (int k = 0; k < per; ++k) {
      const int64_t i = lo + k * int64_t(blockDim.x) + threadIdx.x;
      float m = 0.0f, v = 0.0f;
      if (i < n) {
        const float gi = g[i];
        if (om::finite(gi)) {
          m = om::quant8_decode(qs, c1[i], old1);
          v = om::quant8_decode(qu, c2[i], old2);
          om::adam_moments(m, v, gi, a);
          p[i] = om::adam_param<HF>(p[i], m, v, a);
        }
      }
      mv[k] = m;
      vv[k] = v;
      am1 = fmaxf(am1, fabsf(m));
      am2 = fmaxf(am2, fabsf(v));
    }
    // Every thread has read old1/old2 before the reductions' barriers; only then the new ones.
    am1 = block_max(am1, red);
    am2 = block_max(am2, red);
    if (threadIdx.x == 0) {
      a1[b] = am1;
      a2[b] = am2;
    }
    for (int k = 0; k < per; ++k) {
      const int64_t i = lo + k * int64_t(blockDim.x) + threadIdx.x;
      if (i < n) {
        c1[i] = om::quant8_encode(qs, mv[k], am1, true);
        c2[i] = om::quant8_encode(qu, vv[k], am2, false);
      }
    }
  }
}

__global__ void sgd_sai_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ buf,
                               const float* __restrict__ scale, float lr, int64_t n, bool first, om::SaiScalars s) {
  const float neg = -om::fmul(lr, *scale);
  LATHE_CUDA_GRID_STRIDE(i, n) {
    float pv = p[i];
    om::sgd_sai_element(pv, buf ? buf + i : nullptr, g[i], first, neg, s);
    p[i] = pv;
  }
}

unsigned qgrid(int64_t nblocks) { return static_cast<unsigned>(std::min<int64_t>(nblocks, 65535LL * 32)); }

}  // namespace

void quantize_blockwise8(const Tensor& x, const Tensor& codes, const Tensor& absmax, int64_t block, bool is_signed) {
  const int64_t n = x.numel();
  set_device(x.device().index);
  cudaStream_t s = stream(x.device().index);
  quantize8_kernel<<<qgrid(quant_blocks(n, block)), qthreads(block), 0, s>>>(
      ptr<const float>(x), ptr<uint8_t>(codes), ptr<float>(absmax), n, block, map8(is_signed), is_signed);
  LATHE_CUDA_LAUNCH_CHECK("quantize_blockwise8");
}

void dequantize_blockwise8(const Tensor& codes, const Tensor& absmax, int64_t block, bool is_signed,
                           const Tensor& out) {
  const int64_t n = out.numel();
  set_device(out.device().index);
  cudaStream_t s = stream(out.device().index);
  dequantize8_kernel<<<blocks_for(n), kThreads, 0, s>>>(ptr<const uint8_t>(codes), ptr<const float>(absmax),
                                                        ptr<float>(out), n, block, map8(is_signed));
  LATHE_CUDA_LAUNCH_CHECK("dequantize_blockwise8");
}

void adamw_step_8bit(const Tensor& param, const Tensor& grad, const Tensor& m_codes, const Tensor& m_absmax,
                     const Tensor& v_codes, const Tensor& v_absmax, double lr, double beta1, double beta2, double eps,
                     double weight_decay, int64_t step, AdamVariant variant, int64_t block) {
  const int64_t n = param.numel();
  LATHE_CHECK(block / qthreads(block) <= kMaxPer) << "adamw_step_8bit: block " << block << " too large";
  set_device(param.device().index);
  cudaStream_t s = stream(param.device().index);
  const om::AdamScalars a = om::adam_scalars(lr, beta1, beta2, eps, weight_decay, step);
  auto* kern = variant == AdamVariant::hf ? adam8_kernel<true> : adam8_kernel<false>;
  kern<<<qgrid(quant_blocks(n, block)), qthreads(block), 0, s>>>(
      ptr<float>(param), ptr<const float>(grad), ptr<uint8_t>(m_codes), ptr<float>(m_absmax), ptr<uint8_t>(v_codes),
      ptr<float>(v_absmax), n, block, a, map8(true), map8(false));
  LATHE_CUDA_LAUNCH_CHECK("adamw_step_8bit");
}

void sgd_sai_step(const Tensor& param, const Tensor& grad, const Tensor& buf, const Tensor& scale, double lr,
                  double momentum, double weight_decay, bool first) {
  const int64_t n = param.numel();
  set_device(param.device().index);
  cudaStream_t s = stream(param.device().index);
  sgd_sai_kernel<<<blocks_for(n), kThreads, 0, s>>>(ptr<float>(param), ptr<const float>(grad),
                                                    buf.defined() ? ptr<float>(buf) : nullptr,
                                                    ptr<const float>(scale), static_cast<float>(lr), n, first,
                                                    om::sai_scalars(lr, momentum, weight_decay));
  LATHE_CUDA_LAUNCH_CHECK("sgd_sai_step");
}

}  // namespace lathe::kernels::cuda
