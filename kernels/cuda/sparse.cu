// SpIEL's sparse weight gradient on CUDA: one warp per selected entry n, its lanes striding
// over the tokens, dv[n] = sum_t x[t, cols[n]] dy[t, rows[n]] (a warp reduction, fixed order
// for a given T: the same bits on every run). A bad index (outside [0, out) or [0, in))
// gives NaN in that entry (floats), as the indexing kernels do, instead of a read outside.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace lathe::kernels::cuda {

namespace {

template <typename T>
__global__ void sparse_delta_grad_kernel(const T* __restrict__ x, const T* __restrict__ dy,
                                         const int64_t* __restrict__ rows, const int64_t* __restrict__ cols,
                                         T* __restrict__ out, int64_t T_, int64_t in, int64_t no, int64_t k) {
  using A = acc_t<T>;
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t(blockDim.x) >> 5) * gridDim.x;
  for (int64_t n = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; n < k; n += warps) {
    const int64_t r = rows[n], c = cols[n];
    if (r < 0 || r >= no || c < 0 || c >= in) {
      if (lane == 0) out[n] = st<T>(A(NAN));
      continue;
    }
    A acc = 0;
    for (int64_t t = lane; t < T_; t += 32) acc += ld(x[t * in + c]) * ld(dy[t * no + r]);
    acc = warp_sum(acc);
    if (lane == 0) out[n] = st<T>(acc);
  }
}

}  // namespace

void sparse_delta_grad(const Tensor& x, const Tensor& dy, const Tensor& rows, const Tensor& cols, const Tensor& out) {
  const int64_t T_ = x.size(0), in = x.size(1), no = dy.size(1), k = out.numel();
  set_device(x.device().index);
  cudaStream_t s = stream(x.device().index);
  const unsigned blocks = blocks_for(k * 32);
  LATHE_CUDA_DISPATCH_FLOAT("sparse_delta_grad", x.dtype(), T, {
    sparse_delta_grad_kernel<T><<<blocks, kThreads, 0, s>>>(ptr<const T>(x), ptr<const T>(dy),
                                                            ptr<const int64_t>(rows), ptr<const int64_t>(cols),
                                                            ptr<T>(out), T_, in, no, k);
  });
  LATHE_CUDA_LAUNCH_CHECK("sparse_delta_grad");
}

}  // namespace lathe::kernels::cuda
