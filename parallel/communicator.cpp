#include "parallel/communicator.h"

#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace lathe::parallel {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::avg: return "avg";
    case ReduceOp::max: return "max";
    case ReduceOp::min: return "min";
  }
  return "?";
}

namespace {
double default_timeout() {
  // 600 s leaves room for a peer that writes a large checkpoint while others wait.
  const char* env = std::getenv("LATHE_COMM_TIMEOUT");
  if (env && *env) {
    char* end = nullptr;
    double v = std::strtod(env, &end);
    LATHE_CHECK(end && *end == '\0' && v > 0)
        << "LATHE_COMM_TIMEOUT must be a positive number of seconds, got '" << env << "'";
    return v;
  }
  return 600.0;
}
bool default_debug() {
  const char* env = std::getenv("LATHE_COMM_DEBUG");
  return env && *env && std::string(env) != "0";
}
}  // namespace

Communicator::Communicator() : timeout_s_(default_timeout()), debug_checks_(default_debug()) {}

void Communicator::set_timeout(double seconds) {
  LATHE_CHECK(seconds > 0) << "Communicator::set_timeout: seconds must be > 0, got " << seconds;
  timeout_s_.store(seconds);
}

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"}) {
    if (std::getenv(v)) return true;
  }
  return false;
}

namespace detail {

void check_cpu_tensor(const char* op, const char* what, const Tensor& t) {
  LATHE_CHECK(t.defined()) << op << ": " << what << " is an undefined tensor";
  LATHE_CHECK(t.device().is_cpu()) << op << ": " << what << " is on " << t.device().str()
                                   << "; this communicator moves CPU tensors (CUDA tensors need the NCCL backend)";
}

void check_reduce(const char* op, const Tensor& t, ReduceOp rop) {
  LATHE_CHECK(rop != ReduceOp::avg || is_floating(t.dtype()))
      << op << ": ReduceOp::avg needs a floating dtype, got " << dtype_name(t.dtype()) << " " << t.shape_str()
      << " (use sum and divide)";
}

void check_same_dtype(const char* op, const Tensor& in, const Tensor& out) {
  LATHE_CHECK(in.dtype() == out.dtype()) << op << ": in is " << dtype_name(in.dtype()) << " " << in.shape_str()
                                         << " but out is " << dtype_name(out.dtype()) << " " << out.shape_str();
}

void check_reduce_scatter(const Tensor& in, const Tensor& out, int size) {
  check_same_dtype("reduce_scatter", in, out);
  LATHE_CHECK(in.numel() == out.numel() * size)
      << "reduce_scatter: in " << in.shape_str() << " has " << in.numel() << " elements but needs out.numel() * size = "
      << out.numel() << " * " << size << " = " << out.numel() * size << " (out " << out.shape_str() << ")";
}

void check_all_gather(const Tensor& in, const Tensor& out, int size) {
  check_same_dtype("all_gather", in, out);
  LATHE_CHECK(out.numel() == in.numel() * size)
      << "all_gather: out " << out.shape_str() << " has " << out.numel() << " elements but needs in.numel() * size = "
      << in.numel() << " * " << size << " = " << in.numel() * size << " (in " << in.shape_str() << ")";
}

void check_all_to_all(const Tensor& in, const Tensor& out, int size) {
  check_same_dtype("all_to_all", in, out);
  LATHE_CHECK(in.numel() == out.numel()) << "all_to_all: in " << in.shape_str() << " and out " << out.shape_str()
                                         << " must have the same number of elements";
  LATHE_CHECK(in.dim() >= 1 && in.size(0) % size == 0)
      << "all_to_all: in " << in.shape_str() << " must split along dim 0 into " << size << " equal blocks";
}

void check_root(const char* op, int root, int size) {
  LATHE_CHECK(root >= 0 && root < size) << op << ": root " << root << " is not a rank of this communicator (size "
                                        << size << ")";
}

void check_peer(const char* op, int peer, int size, int tag, int tag_max) {
  LATHE_CHECK(peer >= 0 && peer < size) << op << ": peer rank " << peer << " is not a rank of this communicator (size "
                                        << size << ")";
  LATHE_CHECK(tag >= 0 && tag <= tag_max) << op << ": tag " << tag << " is outside [0, " << tag_max << "]";
}

std::string timeout_message(int rank, const std::string& what, double seconds) {
  std::ostringstream os;
  os << "lathe: rank " << rank << ": " << what << " did not complete within " << seconds
     << " s (a peer rank may have died)";
  return os.str();
}

DType reduce_dtype(DType t) { return (t == DType::bf16 || t == DType::f16) ? DType::f32 : t; }

Tensor staged(const Tensor& t, DType dt) {
  if (t.dtype() == dt && t.is_contiguous()) return t;
  Tensor out = Tensor::empty(t.shape(), dt, Device::cpu());
  out.copy_(t);
  return out;
}

void divide_inplace(const Tensor& t, double d) {
  const int64_t n = t.numel();
  if (t.dtype() == DType::f64) {
    double* p = t.data<double>();
    for (int64_t i = 0; i < n; ++i) p[i] /= d;
  } else if (t.dtype() == DType::f32) {
    float* p = t.data<float>();
    const float df = static_cast<float>(d);
    for (int64_t i = 0; i < n; ++i) p[i] /= df;
  } else {
    LATHE_FAIL() << "divide_inplace: expected an f32/f64 buffer, got " << dtype_name(t.dtype());
  }
}

bool shares_storage(const Tensor& a, const Tensor& b) { return a.storage() == b.storage(); }

}  // namespace detail
}  // namespace lathe::parallel
