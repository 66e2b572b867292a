// Embedding lookup (row gather) and its backward (row scatter-add).
//
// The backward groups positions by id with a counting sort, then each output row sums
// its positions in increasing order: no two threads write the same row and the sum order
// is fixed, so the result does not depend on the thread count.
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/nn.h"

namespace lathe::kernels::cpu {

using nn_detail::acc_t;
using nn_detail::load;
using nn_detail::store;

namespace {

// ids (i64/i32, contiguous) as int64; throws naming `op` on the first id outside [0, V).
std::vector<int64_t> read_ids(const char* op, const Tensor& ids, int64_t V) {
  const int64_t n = ids.numel();
  std::vector<int64_t> out(static_cast<size_t>(n));
  if (ids.dtype() == DType::i64) {
    const int64_t* p = ids.data<int64_t>();
    for (int64_t i = 0; i < n; ++i) out[i] = p[i];
  } else if (ids.dtype() == DType::i32) {
    const int32_t* p = ids.data<int32_t>();
    for (int64_t i = 0; i < n; ++i) out[i] = p[i];
  } else {
    LATHE_FAIL() << op << ": ids must be i64 or i32, got " << dtype_name(ids.dtype());
  }
  for (int64_t i = 0; i < n; ++i)
    LATHE_CHECK(out[i] >= 0 && out[i] < V)
        << op << ": id " << out[i] << " at flat position " << i << " is out of range for " << V << " rows";
  return out;
}

template <typename T>
void embedding_backward_kernel(const Tensor& gy, const std::vector<int64_t>& ids, const Tensor& out) {
  using A = acc_t<T>;
  const int64_t R = out.size(0), C = out.size(1), n = static_cast<int64_t>(ids.size());
  // Counting sort of positions by id: positions of row r are order[start[r] .. start[r+1]).
  std::vector<int64_t> start(static_cast<size_t>(R + 1), 0), order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ++start[ids[i] + 1];
  for (int64_t r = 0; r < R; ++r) start[r + 1] += start[r];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n; ++i) order[fill[ids[i]]++] = i;
  }
  const T* gp = gy.data<T>();
  T* op = out.data<T>();
#pragma omp parallel if (n * C > 16384 || R * C > 65536)
  {
    std::vector<A> acc(static_cast<size_t>(C));
#pragma omp for schedule(dynamic, 16)
    for (int64_t r = 0; r < R; ++r) {
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t k = start[r]; k < start[r + 1]; ++k) {
        const T* g = gp + order[k] * C;
        for (int64_t j = 0; j < C; ++j) acc[j] += load(g[j]);
      }
      T* o = op + r * C;
      for (int64_t j = 0; j < C; ++j) o[j] = store<T>(acc[j]);
    }
  }
}

}  // namespace

void embedding(const Tensor& w, const Tensor& ids, const Tensor& out) {
  const int64_t V = w.size(0), C = w.size(1);
  Tensor wc = w.contiguous(), ic = ids.contiguous();
  const std::vector<int64_t> id = read_ids("embedding", ic, V);
  const size_t row_bytes = static_cast<size_t>(C) * w.element_size();
  const char* src = static_cast<const char*>(wc.raw_data());
  char* dst = static_cast<char*>(out.raw_data());
  const int64_t n = static_cast<int64_t>(id.size());
  if (row_bytes == 0) return;
#pragma omp parallel for schedule(static) if (n * C > 16384)
  for (int64_t i = 0; i < n; ++i) std::memcpy(dst + i * row_bytes, src + id[i] * row_bytes, row_bytes);
}

void embedding_backward(const Tensor& gy, const Tensor& ids, const Tensor& out) {
  Tensor gc = gy.contiguous(), ic = ids.contiguous();
  const std::vector<int64_t> id = read_ids("embedding_backward", ic, out.size(0));
  LATHE_NN_DISPATCH_FLOAT("embedding_backward", gy.dtype(), T, embedding_backward_kernel<T>(gc, id, out));
}

}  // namespace lathe::kernels::cpu
