// Ulysses sequence parallelism; see ulysses.h.
#include "parallel/ulysses.h"

#include <functional>
#include <string>
#include <vector>

#include "autograd/function.h"
#include "autograd/ops.h"
#include "models/attention.h"

namespace lathe::parallel {

namespace ag = lathe::autograd;

namespace {

// One all-to-all of a contiguous copy into a fresh tensor (no autograd).
Tensor exchange(const Tensor& x, Communicator& comm) {
  Tensor in = x.detach().contiguous();
  Tensor out = Tensor::empty(in.shape(), in.dtype(), in.device());
  comm.all_to_all(in, out);
  return out;
}

}  // namespace

void for_each_attention(autograd::Module& m, const std::string& prefix,
                        const std::function<void(models::Attention&, const std::string&)>& fn) {
  if (auto* a = dynamic_cast<models::Attention*>(&m)) fn(*a, prefix);
  for (const auto& [name, child] : m.children())
    if (child) for_each_attention(*child, prefix.empty() ? name : prefix + "." + name, fn);
}

Tensor all_to_all(const Tensor& x, const std::shared_ptr<Communicator>& comm) {
  LATHE_CHECK(comm != nullptr) << "all_to_all: no communicator";
  LATHE_CHECK(x.dim() >= 1 && x.size(0) % comm->size() == 0)
      << "all_to_all: dim 0 of " << x.shape_str() << " must be divisible by the group size " << comm->size();
  Tensor out = exchange(x, *comm);
  return ag::record("all_to_all", out, {x}, [comm](const std::vector<Tensor>& g, const std::vector<bool>&) {
    return std::vector<Tensor>{exchange(g[0], *comm)};
  });
}

Tensor seq_to_heads(const Tensor& x, const std::shared_ptr<Communicator>& comm) {
  LATHE_CHECK(x.dim() == 4) << "seq_to_heads: expected [B, H, T/P, D], got " << x.shape_str();
  const int64_t P = comm->size(), B = x.size(0), H = x.size(1), Tl = x.size(2), D = x.size(3);
  LATHE_CHECK(H % P == 0) << "seq_to_heads: " << H << " heads do not split over " << P << " ranks";
  // [B, P, H/P, Tl, D] -> blocks by destination rank [P, B, H/P, Tl, D]
  Tensor y = ag::permute(ag::reshape(x, {B, P, H / P, Tl, D}), {1, 0, 2, 3, 4});
  // Block j now holds rank j's slice: [P(slice), B, H/P, Tl, D] -> [B, H/P, P * Tl, D]
  Tensor z = all_to_all(y, comm);
  return ag::reshape(ag::permute(z, {1, 2, 0, 3, 4}), {B, H / P, P * Tl, D});
}

Tensor heads_to_seq(const Tensor& x, const std::shared_ptr<Communicator>& comm) {
  LATHE_CHECK(x.dim() == 4) << "heads_to_seq: expected [B, H/P, T, D], got " << x.shape_str();
  const int64_t P = comm->size(), B = x.size(0), Hl = x.size(1), T = x.size(2), D = x.size(3);
  LATHE_CHECK(T % P == 0) << "heads_to_seq: sequence length " << T << " does not split over " << P << " ranks";
  // [B, Hl, P, T/P, D] -> blocks by destination (the slice's rank) [P, B, Hl, T/P, D]
  Tensor y = ag::permute(ag::reshape(x, {B, Hl, P, T / P, D}), {2, 0, 1, 3, 4});
  // Block j now holds head group j: [P(group), B, Hl, T/P, D] -> [B, P * Hl, T/P, D]
  Tensor z = all_to_all(y, comm);
  return ag::reshape(ag::permute(z, {1, 0, 2, 3, 4}), {B, P * Hl, T / P, D});
}

std::string ulysses_heads_problem(int64_t n_head, int64_t n_kv_head, int sp) {
  if (n_head % sp != 0)
    return std::to_string(n_head) + " query heads do not split over sequence_parallel " + std::to_string(sp) +
           " (Ulysses needs n_head % sequence_parallel == 0)";
  if (n_kv_head % sp != 0 && sp % n_kv_head != 0)
    return std::to_string(n_kv_head) + " key/value heads neither split over sequence_parallel " +
           std::to_string(sp) + " nor divide it (Ulysses needs n_kv_head % sp == 0 or sp % n_kv_head == 0)";
  return "";
}

Tensor ulysses_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale, int64_t window,
                         const std::shared_ptr<Communicator>& comm) {
  const int P = comm->size();
  const int64_t H = q.size(1), Hkv = k.size(1);
  const std::string problem = ulysses_heads_problem(H, Hkv, P);
  LATHE_CHECK(problem.empty()) << "Ulysses attention: " << problem;
  Tensor kk = k, vv = v;
  if (Hkv < P) {
    // Each KV head replicated P / Hkv times, so rank r gets KV head r / (P / Hkv): the one
    // its query heads r*H/P .. (r+1)*H/P - 1 use.
    const int64_t rep = P / Hkv, B = k.size(0), Tl = k.size(2), D = k.size(3);
    auto replicate = [&](const Tensor& t) {
      return ag::reshape(ag::expand(ag::reshape(t, {B, Hkv, 1, Tl, D}), {B, Hkv, rep, Tl, D}), {B, Hkv * rep, Tl, D});
    };
    kk = replicate(k);
    vv = replicate(v);
  }
  Tensor y = ag::attention(seq_to_heads(q, comm), seq_to_heads(kk, comm), seq_to_heads(vv, comm), /*causal=*/true,
                           scale, window);
  return heads_to_seq(y, comm);
}

void set_ulysses(models::CausalLM& model, std::shared_ptr<Communicator> sp) {
  if (!sp || sp->size() <= 1) {
    for_each_attention(model, "", [](models::Attention& a, const std::string&) { a.core = nullptr; });
    return;
  }
  for_each_attention(model, "", [&](models::Attention& a, const std::string& name) {
    const std::string problem = ulysses_heads_problem(a.n_head, a.n_kv_head, sp->size());
    LATHE_CHECK(problem.empty()) << "Ulysses sequence parallelism: layer " << name << ": " << problem;
  });
  for_each_attention(model, "", [&](models::Attention& a, const std::string&) {
    a.core = [sp](const Tensor& q, const Tensor& k, const Tensor& v, double scale, int64_t window) {
      return ulysses_attention(q, k, v, scale, window, sp);
    };
  });
}

SequenceSlice slice_sequence(const Tensor& ids, const Tensor& targets, int rank, int size, int64_t ignore_index,
                             int64_t pad_id) {
  LATHE_CHECK(ids.dim() == 2 && ids.shape() == targets.shape())
      << "slice_sequence: ids and targets must both be [B, T], got " << ids.shape_str() << " and "
      << targets.shape_str();
  LATHE_CHECK(size >= 1 && rank >= 0 && rank < size) << "slice_sequence: rank " << rank << " of " << size;
  const int64_t B = ids.size(0), T = ids.size(1);
  const int64_t Tp = (T + size - 1) / size * size, L = Tp / size;
  SequenceSlice s;
  s.start = rank * L;
  s.padded_len = Tp;
  s.ids = Tensor::full({B, L}, static_cast<double>(pad_id), ids.dtype(), ids.device());
  s.targets = Tensor::full({B, L}, static_cast<double>(ignore_index), targets.dtype(), targets.device());
  const int64_t real = std::max<int64_t>(0, std::min(T, s.start + L) - s.start);
  if (real > 0) {
    s.ids.narrow(1, 0, real).copy_(ids.narrow(1, s.start, real));
    s.targets.narrow(1, 0, real).copy_(targets.narrow(1, s.start, real));
  }
  return s;
}

}  // namespace lathe::parallel
