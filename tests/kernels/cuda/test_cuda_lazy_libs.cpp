// cuBLAS, cuBLASLt and cuSOLVER are opened on their first call (kernels/cuda/lazy_libs.cpp), so
// a process that only computes on the CPU never maps them: linked normally they cost every
// lathe process ~235 MB of RSS (bench/README.md section 18). Its own executable, so that no
// other test has loaded the libraries before the first test looks. Needs no GPU.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cusolverDn.h>
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "core/rng.h"
#include "kernels/ops.h"

using namespace lathe;

namespace {

bool mapped(const std::string& lib) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line))
    if (line.find("/" + lib) != std::string::npos) return true;
  return false;
}

// Declared first: gtest runs a file's tests in order when the whole binary runs.
TEST(CudaLazyLibs, CpuWorkMapsNoCudaMathLibrary) {
  Generator gen(5);
  const Tensor a = Tensor::randn({24, 16}, gen), w = Tensor::randn({8, 16}, gen), b = Tensor::randn({8}, gen);
  const Tensor y = kernels::linear(a, w, b, kernels::Activation::gelu_tanh);
  const Tensor p = kernels::matmul(a, w, false, true);
  const auto s = kernels::svd(p.to(DType::f64));
  EXPECT_EQ(y.shape(), (Shape{24, 8}));
  EXPECT_EQ(s.s.numel(), 8);
  for (const char* lib : {"libcublas.so", "libcublasLt.so", "libcusolver.so", "libcusparse.so", "libnvJitLink.so"})
    EXPECT_FALSE(mapped(lib)) << lib << " is mapped although only CPU ops ran";
}

// The forwarding definitions reach the real functions (these need no device).
TEST(CudaLazyLibs, FirstCallLoadsTheLibrary) {
  EXPECT_STREQ(cublasGetStatusString(CUBLAS_STATUS_NOT_SUPPORTED), "the requested functionality is not supported");
  EXPECT_TRUE(mapped("libcublas.so"));
  cublasLtHandle_t lt = nullptr;
  const cublasStatus_t st = cublasLtCreate(&lt);  // fails cleanly without a GPU
  EXPECT_TRUE(st == CUBLAS_STATUS_SUCCESS || st == CUBLAS_STATUS_NOT_INITIALIZED) << st;
  EXPECT_TRUE(mapped("libcublasLt.so"));
  cusolverDnHandle_t sol = nullptr;
  const cusolverStatus_t ss = cusolverDnCreate(&sol);
  EXPECT_TRUE(ss == CUSOLVER_STATUS_SUCCESS || ss == CUSOLVER_STATUS_NOT_INITIALIZED) << ss;
  EXPECT_TRUE(mapped("libcusolver.so"));
}

}  // namespace
