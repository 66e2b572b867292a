// The fused linear layer on CUDA: y = act(x @ w^T + bias) as one cublasLtMatmul whose
// epilogue adds the bias (CUBLASLT_EPILOGUE_BIAS) and applies GPT-2's tanh GELU
// (CUBLASLT_EPILOGUE_GELU_BIAS), writing the pre-activation as the auxiliary output when the
// backward needs it (CUBLASLT_EPILOGUE_GELU_AUX_BIAS). The epilogue works on the f32
// accumulator, so a bf16 output is rounded once (the CPU rounds after the GEMM, the bias and
// the GELU: the two agree to bf16 tolerance, not bit for bit). f32 takes the bias epilogue and
// the elementwise GELU kernel (see gelu_in_epilogue).
//
// Row-major to column-major: y [M, N] row-major is y^T, an N x M column-major matrix with
// ld N, and y^T = w x^T: cuBLASLt's A is w (stored K x N column-major, used transposed), B
// is x (stored K x M column-major), and the bias runs along D's N rows as cuBLASLt wants.
//
// Precision: CUBLAS_COMPUTE_32F for f32 (exact f32, no TF32), bf16 and f16; split-K
// reductions only in the compute type, so 16-bit outputs still round once. f64, K = 0 and
// any problem the heuristic declines take the plain path: matmul.cu's GEMM, then the bias
// add and the GELU as separate kernels (the CPU's sequence, kernels/cpu/fused.cpp).
//
// The heuristic's choice is cached per (device, dtype, shape, leading dims, epilogue,
// pointer alignments); one 32 MiB workspace per device, allocated once (so cuBLASLt never
// allocates inside a call, as graph capture requires).
#include <string>
#include <cstdlib>
#include <cublasLt.h>

#include <atomic>
#include <map>
#include <mutex>
#include <tuple>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_ops.h"

#define LATHE_CUBLASLT_CHECK(expr)                                                                 \
  do {                                                                                             \
    cublasStatus_t lathe_st_ = (expr);                                                             \
    LATHE_CHECK(lathe_st_ == CUBLAS_STATUS_SUCCESS) << "linear: cuBLASLt error in " #expr ": "     \
                                                    << cublasGetStatusString(lathe_st_);           \
  } while (0)

namespace lathe::kernels::cuda {

namespace {

constexpr int kMaxDevices = 16;
constexpr size_t kWorkspaceBytes = size_t(32) << 20;

struct LtContext {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
};

LtContext& lt_context(int dev) {
  static std::mutex mu;
  static LtContext ctx[kMaxDevices];
  LATHE_CHECK(dev >= 0 && dev < kMaxDevices) << "linear: cuda:" << dev << " is beyond the supported devices";
  std::lock_guard<std::mutex> lk(mu);
  LtContext& c = ctx[dev];
  if (!c.handle) {
    set_device(dev);
    LATHE_CUBLASLT_CHECK(cublasLtCreate(&c.handle));
    LATHE_CUDA_CHECK(cudaMalloc(&c.workspace, kWorkspaceBytes));  // held for the process's lifetime
  }
  return c;
}

// Largest power of two (at most 256, cuBLASLt's default requirement) dividing the address,
// and, for a matrix, every column's start (ld elements of es bytes apart): what an algorithm
// may assume about all of its loads.
uint32_t alignment_of(const void* p, int64_t ld = 0, size_t es = 0) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uint64_t step = static_cast<uint64_t>(ld) * es;
  uint32_t al = 256;
  while (al > 1 && ((a % al) != 0 || (step % al) != 0)) al >>= 1;
  return al;
}

// Descriptors freed on every path out (a failed check throws).
struct LtDescs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtDescs() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

// dev, dtype, M, N, K, lda, ldb, epilogue, aux ld, alignments of A, B, D, bias, aux.
using AlgoKey = std::tuple<int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int, int64_t, uint32_t, uint32_t,
                           uint32_t, uint32_t, uint32_t>;
struct AlgoEntry {
  bool ok = false;  // false: the heuristic found nothing; take the plain path
  cublasLtMatmulAlgo_t algo;
};

std::atomic<int64_t> g_declined{0};
std::mutex g_cache_mu;
std::map<AlgoKey, AlgoEntry>& algo_cache() {
  static std::map<AlgoKey, AlgoEntry> cache;
  return cache;
}

// A row-major [rows, cols] matrix cuBLASLt can read in place: unit column stride and a
// row stride of at least cols (any stride for a single row). Otherwise a contiguous copy.
Tensor as_rows(const Tensor& t, int64_t rows, int64_t cols) {
  Tensor r = t.reshape({rows, cols});
  const bool ok = (cols == 1 || r.stride(1) == 1) && (rows == 1 || r.stride(0) >= cols);
  return ok ? r : r.contiguous();
}
int64_t row_ld(const Tensor& r) { return r.size(0) == 1 ? r.size(1) : r.stride(0); }

// Whether GPT-2's GELU runs in cuBLASLt's epilogue for this dtype; otherwise the bias
// epilogue writes the pre-activation and the elementwise gelu_tanh kernel follows. f32 keeps
// the CPU's formula (x * sigmoid(2u), f32 math): cuBLASLt does not document how precisely its
// epilogue evaluates tanh, and f32 parity is held to 1e-5. In bf16/f16 one output rounding
// dwarfs any such difference, and that is the training path the fusion is for.
bool gelu_in_epilogue(DType dt) { return dt == DType::bf16 || dt == DType::f16; }

// The CPU's sequence on the GPU: GEMM, bias add, activation, each rounding to the dtype.
void linear_plain(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act, const Tensor& out,
                  const Tensor& pre) {
  Shape ws(x.shape().begin(), x.shape().end() - 2);
  ws.push_back(w.size(0));
  ws.push_back(w.size(1));
  const bool has_act = act != Activation::none;
  Tensor prod = !bias.defined() && !has_act ? out
                : !bias.defined() && pre.defined() ? pre
                                                   : Tensor::empty(out.shape(), out.dtype(), out.device());
  matmul(x, w.expand(ws), false, true, prod);
  Tensor z = prod;
  if (bias.defined()) {
    z = !has_act ? out : (pre.defined() ? pre : Tensor::empty(out.shape(), out.dtype(), out.device()));
    binary(BinaryOp::add, prod, bias.expand(out.shape()), z);
  }
  if (act == Activation::gelu_tanh) unary(UnaryOp::gelu_tanh, z, out);
}

}  // namespace

void linear(const Tensor& x_in, const Tensor& w_in, const Tensor& bias_in, Activation act, const Tensor& out,
            const Tensor& pre) {
  const int dev = out.device().index;
  set_device(dev);
  LATHE_CHECK(out.is_contiguous() && (!pre.defined() || pre.is_contiguous()))
      << "linear: out and pre must be contiguous";
  const int64_t N = w_in.size(0), K = w_in.size(1);
  if (out.numel() == 0) return;
  const int64_t M = out.numel() / N;
  const DType dt = out.dtype();
  if (dt == DType::f64 || K == 0 || !linear_lt_enabled()) return linear_plain(x_in, w_in, bias_in, act, out, pre);
  cudaDataType_t data;
  switch (dt) {
    case DType::f32: data = CUDA_R_32F; break;
    case DType::bf16: data = CUDA_R_16BF; break;
    case DType::f16: data = CUDA_R_16F; break;
    default: LATHE_FAIL() << "linear: no cuda kernel for dtype " << dtype_name(dt);
  }

  const Tensor x = as_rows(x_in, M, K), w = as_rows(w_in, N, K);
  const Tensor bias = bias_in.defined() ? bias_in.contiguous() : Tensor();
  // With the GELU outside the epilogue, the GEMM (+ bias) writes the pre-activation `dst`
  // and the elementwise GELU kernel follows.
  const bool gelu = act == Activation::gelu_tanh && gelu_in_epilogue(dt);
  const bool gelu_after = act == Activation::gelu_tanh && !gelu;
  const bool want_aux = gelu && pre.defined();
  const Tensor dst = !gelu_after ? out : pre.defined() ? pre : Tensor::empty(out.shape(), dt, out.device());
  // cuBLASLt wants the GELU input's leading dim divisible by 8: pad it, then copy out.
  const int64_t aux_ld = want_aux ? (N + 7) / 8 * 8 : 0;
  Tensor aux;
  if (want_aux) aux = aux_ld == N ? pre.view({M, N}) : Tensor::empty({M, aux_ld}, dt, out.device());

  cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
  if (gelu) {
    epi = bias.defined() ? (want_aux ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_BIAS)
                         : (want_aux ? CUBLASLT_EPILOGUE_GELU_AUX : CUBLASLT_EPILOGUE_GELU);
  } else if (bias.defined()) {
    epi = CUBLASLT_EPILOGUE_BIAS;
  }

  const int64_t lda = row_ld(w), ldb = row_ld(x);
  LtDescs ds;
  LATHE_CUBLASLT_CHECK(cublasLtMatmulDescCreate(&ds.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
  LATHE_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof(opT)));
  LATHE_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof(opN)));
  LATHE_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  // The pointers go on the descriptor before the heuristic query: it reads their alignment.
  if (bias.defined()) {
    const void* bp = bias.raw_data();
    LATHE_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof(bp)));
  }
  if (want_aux) {
    void* ap = aux.raw_data();
    LATHE_CUBLASLT_CHECK(
        cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &ap, sizeof(ap)));
    LATHE_CUBLASLT_CHECK(
        cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof(aux_ld)));
  }
  // A: w as stored (K x N column-major), B: x (K x M), D: y^T (N x M, ld N); C is D (beta = 0).
  LATHE_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&ds.a, data, static_cast<uint64_t>(K), static_cast<uint64_t>(N), lda));
  LATHE_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&ds.b, data, static_cast<uint64_t>(K), static_cast<uint64_t>(M), ldb));
  LATHE_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&ds.d, data, static_cast<uint64_t>(N), static_cast<uint64_t>(M), N));

  const size_t es = out.element_size();
  const uint32_t al_a = alignment_of(w.raw_data(), lda, es), al_b = alignment_of(x.raw_data(), ldb, es),
                 al_d = alignment_of(dst.raw_data(), N, es);
  const AlgoKey key{dev, static_cast<int>(dt), M, N, K, lda, ldb, static_cast<int>(epi), aux_ld, al_a, al_b, al_d,
                    bias.defined() ? alignment_of(bias.raw_data()) : 0u,
                    want_aux ? alignment_of(aux.raw_data()) : 0u};
  LtContext& ctx = lt_context(dev);
  AlgoEntry entry;
  bool cached = false;
  {
    std::lock_guard<std::mutex> lk(g_cache_mu);
    auto it = algo_cache().find(key);
    if (it != algo_cache().end()) {
      entry = it->second;
      cached = true;
    }
  }
  if (!cached) {
    LATHE_CUBLASLT_CHECK(cublasLtMatmulPreferenceCreate(&ds.pref));
    const uint64_t ws_bytes = kWorkspaceBytes;
    LATHE_CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(ds.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                              &ws_bytes, sizeof(ws_bytes)));
    // Split-K partial sums only in f32 (never in the 16-bit output type).
    const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    LATHE_CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(ds.pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                                              &schemes, sizeof(schemes)));
    const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, al_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, al_b},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, al_d},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, al_d}};
    for (const auto& [attr, v] : aligns)
      LATHE_CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(ds.pref, attr, &v, sizeof(v)));
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(ctx.handle, ds.op, ds.a, ds.b, ds.d, ds.d, ds.pref, 1, &res, &found);
    entry.ok = st == CUBLAS_STATUS_SUCCESS && found > 0 && res.state == CUBLAS_STATUS_SUCCESS;
    if (entry.ok) entry.algo = res.algo;
    std::lock_guard<std::mutex> lk(g_cache_mu);
    algo_cache()[key] = entry;
  }
  if (!entry.ok) {
    ++g_declined;
    return linear_plain(x_in, w_in, bias_in, act, out, pre);
  }

  const float one = 1.0f, zero = 0.0f;
  const cublasStatus_t st = cublasLtMatmul(ctx.handle, ds.op, &one, w.raw_data(), ds.a, x.raw_data(), ds.b, &zero,
                                           dst.raw_data(), ds.d, dst.raw_data(), ds.d, &entry.algo, ctx.workspace,
                                           kWorkspaceBytes, stream(dev));
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) {
    // The heuristic's pick refused the problem after all: remember, and take the plain path.
    {
      std::lock_guard<std::mutex> lk(g_cache_mu);
      algo_cache()[key].ok = false;
    }
    ++g_declined;
    return linear_plain(x_in, w_in, bias_in, act, out, pre);
  }
  LATHE_CHECK(st == CUBLAS_STATUS_SUCCESS) << "linear: cublasLtMatmul failed (" << cublasGetStatusString(st)
                                           << ") for x " << x_in.shape_str() << ", w " << w_in.shape_str() << ", "
                                           << dtype_name(dt) << ", epilogue " << static_cast<int>(epi);
  LATHE_CUDA_LAUNCH_CHECK("linear");
  if (gelu_after) unary(UnaryOp::gelu_tanh, dst, out);
  if (want_aux && aux_ld != N) pre.view({M, N}).copy_(aux.narrow(1, 0, N));
}

int64_t linear_declined_count() { return g_declined.load(); }

namespace {
std::atomic<bool>& lt_flag() {
  static std::atomic<bool> on{[] {
    const char* e = std::getenv("LATHE_CUDA_LT_EPILOGUE");
    return e && std::string(e) == "1";
  }()};
  return on;
}
std::atomic<bool>& multi_flag() {
  static std::atomic<bool> on{[] {
    const char* e = std::getenv("LATHE_CUDA_MULTI_TENSOR_ADAMW");
    return e && std::string(e) == "1";
  }()};
  return on;
}
}  // namespace

bool linear_lt_enabled() { return lt_flag().load(); }
void set_linear_lt_enabled(bool on) { lt_flag().store(on); }
bool multi_tensor_adamw_enabled() { return multi_flag().load(); }
void set_multi_tensor_adamw_enabled(bool on) { multi_flag().store(on); }

}  // namespace lathe::kernels::cuda
