// cuBLAS, cuBLASLt and cuSOLVER loaded on first use instead of at program start.
//
// Linked normally, these libraries are mapped and initialised before main by every lathe
// process, GPU or not: libcublasLt alone brings ~90 MB of static data (its .ldata/.lbss)
// and ~110 MB of touched file pages, cuSOLVER pulls in cuSPARSE and nvJitLink, ~235 MB of
// peak RSS in all. On the CPU that doubled the peak RSS of a small GPT-2 training run
// (238 -> ~500 MiB, bench/README.md section 18), once per MPI rank. The CUDA backend
// therefore links only the CUDA runtime; the library functions it calls are defined here
// under their own names (the declarations come from the toolkit's headers, so a signature
// that drifts from them is a compile error) and forward to the real function, looked up
// with dlopen/dlsym the first time any of them runs. A CUDA function added to the backend
// must be added to the list below, else the link fails naming it.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cusolverDn.h>
#include <dlfcn.h>

#include "core/error.h"

namespace lathe::kernels::cuda {
namespace {

enum class Lib { cublas, cublas_lt, cusolver };

// The SONAME first (found through the program's run path or the loader's search), then
// the file the build linked against (CMake passes both).
void* open_lib(const char* soname, const char* built_path) {
  void* h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
  if (!h) h = dlopen(built_path, RTLD_NOW | RTLD_LOCAL);
  LATHE_REQUIRE(h != nullptr) << "CUDA backend: cannot load " << soname << " (nor " << built_path
                                << "): " << dlerror();
  return h;
}

void* lib_handle(Lib lib) {
  // One function-local static per library: initialised once, thread-safe.
  switch (lib) {
    case Lib::cublas: {
      static void* h = open_lib(LATHE_CUBLAS_SONAME, LATHE_CUBLAS_PATH);
      return h;
    }
    case Lib::cublas_lt: {
      static void* h = open_lib(LATHE_CUBLASLT_SONAME, LATHE_CUBLASLT_PATH);
      return h;
    }
    case Lib::cusolver: {
      static void* h = open_lib(LATHE_CUSOLVER_SONAME, LATHE_CUSOLVER_PATH);
      return h;
    }
  }
  return nullptr;
}

void* resolve(Lib lib, const char* name) {
  void* f = dlsym(lib_handle(lib), name);
  LATHE_REQUIRE(f != nullptr) << "CUDA backend: symbol " << name << " not found: " << dlerror();
  return f;
}

}  // namespace
}  // namespace lathe::kernels::cuda

// FORWARD(lib, return type, name, (parameters), (arguments)). An extern "C" definition whose
// parameters differ from the header's declaration does not compile.
#define LATHE_LAZY_FORWARD(LIB, RET, NAME, PARAMS, ARGS)                                      \
  extern "C" RET NAME PARAMS {                                                              \
    using Fn = RET(*) PARAMS;                                                               \
    static const Fn fn =                                                                    \
        reinterpret_cast<Fn>(lathe::kernels::cuda::resolve(lathe::kernels::cuda::Lib::LIB, #NAME)); \
    return fn ARGS;                                                                         \
  }

// cuBLAS
LATHE_LAZY_FORWARD(cublas, cublasStatus_t, cublasCreate_v2, (cublasHandle_t * handle), (handle))
LATHE_LAZY_FORWARD(cublas, const char*, cublasGetStatusString, (cublasStatus_t status), (status))
LATHE_LAZY_FORWARD(cublas, cublasStatus_t, cublasSetMathMode, (cublasHandle_t handle, cublasMath_t mode),
                   (handle, mode))
LATHE_LAZY_FORWARD(cublas, cublasStatus_t, cublasSetStream_v2, (cublasHandle_t handle, cudaStream_t stream),
                   (handle, stream))
LATHE_LAZY_FORWARD(cublas, cublasStatus_t, cublasSetWorkspace_v2,
                   (cublasHandle_t handle, void* workspace, size_t bytes), (handle, workspace, bytes))
LATHE_LAZY_FORWARD(cublas, cublasStatus_t, cublasGemmStridedBatchedEx,
                   (cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                    const void* alpha, const void* A, cudaDataType Atype, int lda, long long int strideA,
                    const void* B, cudaDataType Btype, int ldb, long long int strideB, const void* beta, void* C,
                    cudaDataType Ctype, int ldc, long long int strideC, int batchCount,
                    cublasComputeType_t computeType, cublasGemmAlgo_t algo),
                   (handle, transa, transb, m, n, k, alpha, A, Atype, lda, strideA, B, Btype, ldb, strideB, beta,
                    C, Ctype, ldc, strideC, batchCount, computeType, algo))

// cuBLASLt
LATHE_LAZY_FORWARD(cublas_lt, cublasStatus_t, cublasLtCreate, (cublasLtHandle_t * handle), (handle))
LATHE_LAZY_FORWARD(cublas_lt, cublasStatus_t, cublasLtMatmul,
                   (cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha, const void* A,
                    cublasLtMatrixLayout_t Adesc, const void* B, cublasLtMatrixLayout_t Bdesc, const void* beta,
                    const void* C, cublasLtMatrixLayout_t Cdesc, void* D, cublasLtMatrixLayout_t Ddesc,
                    const cublasLtMatmulAlgo_t* algo, void* workspace, size_t workspaceBytes, cudaStream_t stream),
                   (handle, desc, alpha, A, Adesc, B, Bdesc, beta, C, Cdesc, D, Ddesc, algo, workspace,
                    workspaceBytes, stream))
LATHE_LAZY_FORWARD(cublas_lt, cublasStatus_t, cublasLtMatmulAlgoGetHeuristic,
                   (cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t Adesc,
                    cublasLtMatrixLayout_t Bdesc, cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                    cublasLtMatmulPreference_t pref, int requested, cublasLtMatmulHeuristicResult_t results[],
                    int* returned),
                   (handle, desc, Adesc, Bdesc, Cdesc, Ddesc, pref, requested, results, returned))
LATHE_LAZY_FORWARD(cublas_lt, cublasStatus_t, cublasLtMatmulDescCreate,
                   (cublasLtMatmulDesc_t * desc, cublasComputeType_t computeType, cudaDataType_t scaleType),
                   (desc, computeType, scaleType))
LATHE_LAZY_FORWARD(cublas_lt, cublasStatus_t, cublasLtMatmulDescDestroy, (cublasLtMatmulDesc_t desc), (desc))
LATHE_LAZY_FORWARD(cublas_lt, cublasStatus_t, cublasLtMatmulDescSetAttribute,
                   (cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const void* buf, size_t bytes),
                   (desc, attr, buf, bytes))
LATHE_LAZY_FORWARD(cublas_lt, cublasStatus_t, cublasLtMatmulPreferenceCreate, (cublasLtMatmulPreference_t * pref),
                   (pref))
LATHE_LAZY_FORWARD(cublas_lt, cublasStatus_t, cublasLtMatmulPreferenceDestroy, (cublasLtMatmulPreference_t pref),
                   (pref))
LATHE_LAZY_FORWARD(cublas_lt, cublasStatus_t, cublasLtMatmulPreferenceSetAttribute,
                   (cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                    size_t bytes),
                   (pref, attr, buf, bytes))
LATHE_LAZY_FORWARD(cublas_lt, cublasStatus_t, cublasLtMatrixLayoutCreate,
                   (cublasLtMatrixLayout_t * layout, cudaDataType type, uint64_t rows, uint64_t cols, int64_t ld),
                   (layout, type, rows, cols, ld))
LATHE_LAZY_FORWARD(cublas_lt, cublasStatus_t, cublasLtMatrixLayoutDestroy, (cublasLtMatrixLayout_t layout),
                   (layout))

// cuSOLVER (dense QR and SVD for GaLore's projections)
LATHE_LAZY_FORWARD(cusolver, cusolverStatus_t, cusolverDnCreate, (cusolverDnHandle_t * handle), (handle))
LATHE_LAZY_FORWARD(cusolver, cusolverStatus_t, cusolverDnSetStream, (cusolverDnHandle_t handle, cudaStream_t stream),
                   (handle, stream))
LATHE_LAZY_FORWARD(cusolver, cusolverStatus_t, cusolverDnSgeqrf_bufferSize,
                   (cusolverDnHandle_t handle, int m, int n, float* A, int lda, int* lwork), (handle, m, n, A, lda, lwork))
LATHE_LAZY_FORWARD(cusolver, cusolverStatus_t, cusolverDnDgeqrf_bufferSize,
                   (cusolverDnHandle_t handle, int m, int n, double* A, int lda, int* lwork),
                   (handle, m, n, A, lda, lwork))
LATHE_LAZY_FORWARD(cusolver, cusolverStatus_t, cusolverDnSgeqrf,
                   (cusolverDnHandle_t handle, int m, int n, float* A, int lda, float* tau, float* work, int lwork,
                    int* info),
                   (handle, m, n, A, lda, tau, work, lwork, info))
LATHE_LAZY_FORWARD(cusolver, cusolverStatus_t, cusolverDnDgeqrf,
                   (cusolverDnHandle_t handle, int m, int n, double* A, int lda, double* tau, double* work, int lwork,
                    int* info),
                   (handle, m, n, A, lda, tau, work, lwork, info))
LATHE_LAZY_FORWARD(cusolver, cusolverStatus_t, cusolverDnSorgqr_bufferSize,
                   (cusolverDnHandle_t handle, int m, int n, int k, const float* A, int lda, const float* tau,
                    int* lwork),
                   (handle, m, n, k, A, lda, tau, lwork))
LATHE_LAZY_FORWARD(cusolver, cusolverStatus_t, cusolverDnDorgqr_bufferSize,
                   (cusolverDnHandle_t handle, int m, int n, int k, const double* A, int lda, const double* tau,
                    int* lwork),
                   (handle, m, n, k, A, lda, tau, lwork))
LATHE_LAZY_FORWARD(cusolver, cusolverStatus_t, cusolverDnSorgqr,
                   (cusolverDnHandle_t handle, int m, int n, int k, float* A, int lda, const float* tau, float* work,
                    int lwork, int* info),
                   (handle, m, n, k, A, lda, tau, work, lwork, info))
LATHE_LAZY_FORWARD(cusolver, cusolverStatus_t, cusolverDnDorgqr,
                   (cusolverDnHandle_t handle, int m, int n, int k, double* A, int lda, const double* tau,
                    double* work, int lwork, int* info),
                   (handle, m, n, k, A, lda, tau, work, lwork, info))
LATHE_LAZY_FORWARD(cusolver, cusolverStatus_t, cusolverDnSgesvd_bufferSize,
                   (cusolverDnHandle_t handle, int m, int n, int* lwork), (handle, m, n, lwork))
LATHE_LAZY_FORWARD(cusolver, cusolverStatus_t, cusolverDnDgesvd_bufferSize,
                   (cusolverDnHandle_t handle, int m, int n, int* lwork), (handle, m, n, lwork))
LATHE_LAZY_FORWARD(cusolver, cusolverStatus_t, cusolverDnSgesvd,
                   (cusolverDnHandle_t handle, signed char jobu, signed char jobvt, int m, int n, float* A, int lda,
                    float* S, float* U, int ldu, float* VT, int ldvt, float* work, int lwork, float* rwork, int* info),
                   (handle, jobu, jobvt, m, n, A, lda, S, U, ldu, VT, ldvt, work, lwork, rwork, info))
LATHE_LAZY_FORWARD(cusolver, cusolverStatus_t, cusolverDnDgesvd,
                   (cusolverDnHandle_t handle, signed char jobu, signed char jobvt, int m, int n, double* A, int lda,
                    double* S, double* U, int ldu, double* VT, int ldvt, double* work, int lwork, double* rwork,
                    int* info),
                   (handle, jobu, jobvt, m, n, A, lda, S, U, ldu, VT, ldvt, work, lwork, rwork, info))
