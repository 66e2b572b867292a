// Rotary position embedding on CUDA (Su et al., "RoFormer", 2021), rotate_half layout as
// kernels/cpu/attention.cpp: element i of a row pairs with i + D/2, and
//   out[i]       = a * cos - b * sin'
//   out[i + D/2] = b * cos + a * sin'      (a = x[i], b = x[i + D/2], sin' = -sin if inverse)
// computed in f32 (f64 for f64 x) with cos/sin converted to that type first, as the CPU.
// The products and sums are rounded separately (no FMA contraction), exactly as the CPU
// build evaluates them, so the results match it bit for bit.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace lathe::kernels::cuda {

namespace {

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }

// Thread per pair (row r, i < half); x/out [rows, D] contiguous, cos/sin [T, half].
template <typename T, typename TC>
__global__ void rope_kernel(const T* __restrict__ x, const TC* __restrict__ cos_t, const TC* __restrict__ sin_t,
                            T* __restrict__ out, int64_t pairs, int64_t half, int64_t T_, bool inverse) {
  using A = acc_t<T>;
  LATHE_CUDA_GRID_STRIDE(p, pairs) {
    const int64_t r = p / half, i = p - r * half;
    const int64_t t = r % T_;
    const T* xr = x + r * 2 * half;
    T* orow = out + r * 2 * half;
    const A a = ld(xr[i]), b = ld(xr[i + half]);
    const A c = convert<A>(cos_t[t * half + i]);
    A sn = convert<A>(sin_t[t * half + i]);
    if (inverse) sn = -sn;  // rotating by -theta flips the sine
    orow[i] = st<T>(sub_rn(mul_rn(a, c), mul_rn(b, sn)));
    orow[i + half] = st<T>(add_rn(mul_rn(b, c), mul_rn(a, sn)));
  }
}

}  // namespace

void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, const Tensor& out) {
  const int64_t T_ = x.size(2), D = x.size(3), half = D / 2;
  const int64_t pairs = x.numel() / 2;
  if (pairs == 0 || half == 0 || T_ == 0) return;
  LATHE_CHECK(x.is_contiguous() && cos.is_contiguous() && sin.is_contiguous() && out.is_contiguous())
      << "rope: cuda kernel needs contiguous x, cos, sin and output";
  LATHE_CHECK(cos.dtype() == sin.dtype()) << "rope: cos is " << dtype_name(cos.dtype()) << ", sin is "
                                          << dtype_name(sin.dtype()) << "; the cuda kernel needs one dtype";
  const int dev = x.device().index;
  set_device(dev);
  cudaStream_t s = stream(dev);
  LATHE_CUDA_DISPATCH_FLOAT("rope", x.dtype(), T, LATHE_CUDA_DISPATCH_FLOAT("rope", cos.dtype(), TC, {
    rope_kernel<T, TC><<<blocks_for(pairs), kThreads, 0, s>>>(ptr<const T>(x), ptr<const TC>(cos), ptr<const TC>(sin),
                                                              ptr<T>(out), pairs, half, T_, inverse);
  }));
  LATHE_CUDA_LAUNCH_CHECK("rope");
}

}  // namespace lathe::kernels::cuda
