#include "models/autocast.h"

#include "autograd/ops.h"
#include "core/error.h"

namespace lathe::models {

namespace {
thread_local bool g_enabled = false;
thread_local DType g_dtype = DType::f32;
}  // namespace

Autocast::Autocast(DType compute) : prev_enabled_(g_enabled), prev_dtype_(g_dtype) {
  LATHE_CHECK(is_floating(compute)) << "Autocast: the compute dtype must be floating, got " << dtype_name(compute);
  g_enabled = compute == DType::bf16 || compute == DType::f16;
  g_dtype = compute;
}

Autocast::~Autocast() {
  g_enabled = prev_enabled_;
  g_dtype = prev_dtype_;
}

bool Autocast::enabled() { return g_enabled; }
DType Autocast::dtype() { return g_dtype; }

Tensor autocast(const Tensor& x) {
  if (!g_enabled || !x.defined() || !is_floating(x.dtype()) || x.dtype() == g_dtype) return x;
  return autograd::cast(x, g_dtype);
}

}  // namespace lathe::models
