// CPU kernels for the elementwise, reduction, matmul, indexing, dropout and AdamW ops
// (the Backend methods of kernels/backend.h). Outputs are contiguous and already
// allocated; inputs may be any strided view (stride-0 where broadcast).
//
// Also here: the strided row iterator and load/store helpers the kernels share
// (namespace detail), usable by other CPU kernels.
#pragma once

#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "kernels/ops.h"

namespace lathe::kernels::cpu {

// ---- kernels (one per Backend method) ----------------------------------------------------
void unary(UnaryOp op, const Tensor& x, const Tensor& out);
// x and/or y may be undefined (see ops.h); the op decides which one it needs.
void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& gy, const Tensor& out);
void pow_scalar(const Tensor& x, double p, const Tensor& out);
void affine(const Tensor& x, double scale, double shift, const Tensor& out);
void clamp(const Tensor& x, double lo, double hi, const Tensor& out);
void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out);
void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out);
void swiglu(const Tensor& gate, const Tensor& up, const Tensor& out);
void swiglu_backward(const Tensor& gy, const Tensor& gate, const Tensor& up, const Tensor& dgate, const Tensor& dup);
void add_(const Tensor& y, const Tensor& x, double alpha);
void scale_(const Tensor& y, double s);

void reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& axes, int64_t correction, const Tensor& out);

void matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b, const Tensor& out);

void gather(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& out);
void scatter_add(int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out);
void index_select(const Tensor& x, int64_t axis, const Tensor& index, const Tensor& out);
void index_add(int64_t axis, const Tensor& index, const Tensor& src, const Tensor& out);
void sparse_delta_grad(const Tensor& x, const Tensor& dy, const Tensor& rows, const Tensor& cols, const Tensor& out);
// Throws an Error naming `op`, the first bad index and the range when any value of the
// (i64 or i32, any layout) tensor `index` lies outside [0, n).
void check_index_range(const char* op, const Tensor& index, int64_t n);

void dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset, const DropoutOut& out);

namespace detail {

// Compute type: f64 in double, f32/bf16/f16 in float, integers in themselves.
template <typename T> struct CompT { using type = T; };
template <> struct CompT<bf16_t> { using type = float; };
template <> struct CompT<f16_t> { using type = float; };
template <typename T> using comp_t = typename CompT<T>::type;

template <typename T> constexpr bool is_half_v = std::is_same_v<T, bf16_t> || std::is_same_v<T, f16_t>;
template <typename T> constexpr bool is_float_v = is_half_v<T> || std::is_floating_point_v<T>;

template <typename T>
inline comp_t<T> ld(T v) {
  if constexpr (is_half_v<T>) return to_f32(v);
  else return v;
}
template <typename T>
inline T st(comp_t<T> v) {
  if constexpr (is_half_v<T>) return from_f32<T>(v);
  else return v;
}

// Work below this many elements runs on one thread.
constexpr int64_t kParallelGrain = 32768;

// N same-shaped tensors, their dims coalesced (size-1 dims dropped, dims merged where
// every operand is contiguous across them), strides in bytes. The last dim is the "row".
template <size_t N>
struct RowPlan {
  std::vector<int64_t> shape;
  std::array<std::vector<int64_t>, N> bstrides;
  std::array<char*, N> base;
  int64_t numel = 0;
};

template <size_t N>
RowPlan<N> make_row_plan(const std::array<const Tensor*, N>& ts) {
  RowPlan<N> plan;
  const Shape& shape = ts[0]->shape();
  plan.numel = shape_numel(shape);
  for (size_t k = 0; k < N; ++k) plan.base[k] = static_cast<char*>(ts[k]->raw_data());
  // innermost first, then reversed
  std::vector<int64_t> s;
  std::array<std::vector<int64_t>, N> bs;
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    if (shape[d] == 1) continue;
    bool merge = !s.empty();
    for (size_t k = 0; k < N && merge; ++k) {
      int64_t sb = ts[k]->strides()[d] * static_cast<int64_t>(ts[k]->element_size());
      merge = sb == bs[k].back() * s.back();
    }
    if (merge) {
      s.back() *= shape[d];
    } else {
      s.push_back(shape[d]);
      for (size_t k = 0; k < N; ++k)
        bs[k].push_back(ts[k]->strides()[d] * static_cast<int64_t>(ts[k]->element_size()));
    }
  }
  if (s.empty()) {
    s.push_back(1);
    for (size_t k = 0; k < N; ++k) bs[k].push_back(0);
  }
  plan.shape.assign(s.rbegin(), s.rend());
  for (size_t k = 0; k < N; ++k) plan.bstrides[k].assign(bs[k].rbegin(), bs[k].rend());
  return plan;
}

// Calls row(ptrs, inner_byte_strides, n) over all elements of the plan, in pieces of
// rows. Elements are split evenly across OpenMP threads (when numel > grain), so the
// pieces a row is cut into depend on the thread count; kernels must not care.
template <size_t N, typename Row>
void run_rows(const RowPlan<N>& plan, int64_t first, int64_t last, Row& row) {
  const int64_t nd = static_cast<int64_t>(plan.shape.size());
  const int64_t inner = plan.shape[nd - 1];
  std::array<int64_t, N> is;
  for (size_t k = 0; k < N; ++k) is[k] = plan.bstrides[k][nd - 1];
  int64_t r = first / inner, c = first % inner;
  // multi-index of row r over dims 0..nd-2
  std::vector<int64_t> idx(static_cast<size_t>(std::max<int64_t>(nd - 1, 0)), 0);
  int64_t rem = r;
  for (int64_t d = nd - 2; d >= 0; --d) {
    idx[d] = rem % plan.shape[d];
    rem /= plan.shape[d];
  }
  int64_t e = first;
  while (e < last) {
    std::array<char*, N> p;
    for (size_t k = 0; k < N; ++k) {
      int64_t off = c * is[k];
      for (int64_t d = 0; d < nd - 1; ++d) off += idx[d] * plan.bstrides[k][d];
      p[k] = plan.base[k] + off;
    }
    int64_t n = std::min(inner - c, last - e);
    row(p, is, n);
    e += n;
    c = 0;
    for (int64_t d = nd - 2; d >= 0; --d) {
      if (++idx[d] < plan.shape[d]) break;
      idx[d] = 0;
    }
  }
}

template <size_t N, typename Row>
void for_each_row(const std::array<const Tensor*, N>& ts, Row&& row, int64_t grain = kParallelGrain) {
  RowPlan<N> plan = make_row_plan<N>(ts);
  const int64_t n = plan.numel;
  if (n == 0) return;
  if (n <= grain || omp_get_max_threads() == 1 || omp_in_parallel()) {
    run_rows<N>(plan, 0, n, row);
    return;
  }
#pragma omp parallel
  {
    int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    int64_t lo = n * t / nt, hi = n * (t + 1) / nt;
    if (lo < hi) run_rows<N>(plan, lo, hi, row);
  }
}

}  // namespace detail
}  // namespace lathe::kernels::cpu
