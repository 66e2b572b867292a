// Ring attention; see ring_attention.h.
#include "parallel/ring_attention.h"

#include <algorithm>
#include <string>
#include <vector>

#include "autograd/function.h"
#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "parallel/ulysses.h"

namespace lathe::parallel {

namespace ag = lathe::autograd;

namespace {

// Masked scores get this instead of -inf, so a row with no visible key in one block gives
// finite numbers that the online merge weighs by exp(-huge) = 0.
constexpr double kMasked = -1e30;

// Tags of the ring transfers: one per tensor kind, so K, V and their gradients never match
// each other's messages.
enum RingTag : int { kTagK = 0x5a10, kTagV, kTagDK, kTagDV };

// A ring transfer in flight: each tensor sent to rank + 1, what rank - 1 sent arriving in
// `out`. wait() bounds every wait by the communicator's timeout.
struct Shift {
  std::vector<Tensor> in, out;
  std::vector<WorkPtr> work;
  std::vector<Tensor> wait() {
    for (auto& w : work) w->wait();
    work.clear();
    return out;
  }
};
Shift start_shift(const std::vector<Tensor>& xs, const std::vector<int>& tags, Communicator& comm) {
  const int P = comm.size(), r = comm.rank();
  Shift s;
  for (size_t i = 0; i < xs.size(); ++i) {
    s.in.push_back(xs[i].contiguous());  // kept alive until the send completes
    s.out.push_back(Tensor::empty(s.in.back().shape(), s.in.back().dtype(), s.in.back().device()));
    s.work.push_back(comm.recv_async(s.out.back(), (r - 1 + P) % P, tags[i]));
    s.work.push_back(comm.send_async(s.in.back(), (r + 1) % P, tags[i]));
  }
  return s;
}
std::vector<Tensor> shift(const std::vector<Tensor>& xs, const std::vector<int>& tags, Communicator& comm) {
  return start_shift(xs, tags, comm).wait();
}

// The additive mask [1, 1, Tl, Tl] of query slice qr against key block kr (global positions
// qr*Tl + i, kr*Tl + j), or an undefined tensor when every pair is visible. visible = false
// when no pair is.
Tensor block_mask(int64_t qr, int64_t kr, int64_t Tl, int64_t window, const Tensor& like, bool& visible) {
  std::vector<double> m(static_cast<size_t>(Tl * Tl));
  bool any = false, all = true;
  for (int64_t i = 0; i < Tl; ++i)
    for (int64_t j = 0; j < Tl; ++j) {
      const int64_t qp = qr * Tl + i, kp = kr * Tl + j;
      const bool ok = kp <= qp && (window <= 0 || qp - kp < window);
      m[static_cast<size_t>(i * Tl + j)] = ok ? 0.0 : kMasked;
      any = any || ok;
      all = all && ok;
    }
  visible = any;
  if (!any || all) return Tensor();
  return Tensor::from_vector(m, {1, 1, Tl, Tl}).to(like.dtype()).to(like.device());
}

// [B, Hkv, Tl, D] -> [B, H, Tl, D]: query head h reads KV head h / (H / Hkv).
Tensor expand_heads(const Tensor& x, int64_t H) {
  const int64_t B = x.size(0), Hkv = x.size(1), Tl = x.size(2), D = x.size(3);
  if (Hkv == H) return x;
  return ag::reshape(ag::expand(ag::reshape(x, {B, Hkv, 1, Tl, D}), {B, Hkv, H / Hkv, Tl, D}), {B, H, Tl, D})
      .contiguous();
}
// The adjoint: the gradients of a group's query heads summed into their KV head.
Tensor reduce_heads(const Tensor& g, int64_t Hkv) {
  const int64_t B = g.size(0), H = g.size(1), Tl = g.size(2), D = g.size(3);
  if (Hkv == H) return g;
  return ag::sum(ag::reshape(g, {B, Hkv, H / Hkv, Tl, D}), {2});
}

// Scores of the queries against one block, masked.
Tensor scores(const Tensor& q, const Tensor& ke, const Tensor& mask, double scale) {
  Tensor s = ag::mul(ag::matmul(q, ke, false, true), scale);
  return mask.defined() ? ag::add(s, mask) : s;
}

}  // namespace

// The chunks (global indices, in slice order) rank r of P holds: one chunk r of T/P, or with
// zig-zag chunks r and 2P-1-r of T/(2P).
std::vector<int64_t> rank_chunks(int r, int P, bool zigzag) {
  if (!zigzag) return {r};
  return {r, 2 * static_cast<int64_t>(P) - 1 - r};
}

namespace {
// A slice [B, h, n*C, D] as its n chunks along the sequence, and back.
std::vector<Tensor> split_chunks(const Tensor& x, int n) {
  if (n == 1) return {x};
  const int64_t C = x.size(2) / n;
  std::vector<Tensor> out;
  for (int i = 0; i < n; ++i) out.push_back(x.narrow(2, i * C, C).contiguous());
  return out;
}
Tensor join_chunks(const std::vector<Tensor>& xs) { return xs.size() == 1 ? xs[0] : ag::concat(xs, 2).contiguous(); }
}  // namespace

Tensor ring_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale, int64_t window,
                      const std::shared_ptr<Communicator>& comm, bool zigzag) {
  LATHE_CHECK(comm != nullptr) << "ring_attention: no communicator";
  LATHE_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && k.shape() == v.shape())
      << "ring_attention: expected q [B, H, T/P, D] and k, v [B, Hkv, T/P, D], got " << q.shape_str() << ", "
      << k.shape_str() << ", " << v.shape_str();
  const int64_t B = q.size(0), H = q.size(1), Tl = q.size(2), D = q.size(3), Hkv = k.size(1);
  LATHE_CHECK(k.size(0) == B && k.size(2) == Tl && k.size(3) == D && Hkv > 0 && H % Hkv == 0)
      << "ring_attention: q " << q.shape_str() << " and k " << k.shape_str()
      << " do not fit (the same batch, slice and head size; n_head a multiple of n_kv_head)";
  const int nc = zigzag ? 2 : 1;
  LATHE_CHECK(Tl % nc == 0) << "ring_attention: zig-zag slices hold two equal chunks, got a slice of " << Tl
                            << " positions (parallel::zigzag_slice_sequence pads to a multiple of 2 x ranks)";
  const int64_t C = Tl / nc;
  const int P = comm->size(), r = comm->rank();
  const std::vector<int64_t> mine = rank_chunks(r, P, zigzag);
  Tensor out, lse;
  {
    ag::NoGradGuard ng;
    const std::vector<Tensor> qs = split_chunks(q.detach().contiguous(), nc);
    Tensor kb = k.detach().contiguous(), vb = v.detach().contiguous();
    // Per query chunk: running sum of exp(s - mx) v, sum of exp(s - mx), row max.
    std::vector<Tensor> num(nc), den(nc), mx(nc);
    for (int j = 0; j < P; ++j) {
      const int src = (r - j + P) % P;
      // The next block travels while this one is computed.
      Shift next;
      if (j + 1 < P) next = start_shift({kb, vb}, {kTagK, kTagV}, *comm);
      const std::vector<int64_t> theirs = rank_chunks(src, P, zigzag);
      const std::vector<Tensor> ks = split_chunks(expand_heads(kb, H), nc), vs = split_chunks(expand_heads(vb, H), nc);
      // Only the chunk pairs with a visible position are computed: with zig-zag every rank
      // computes two of the four per step (three on the diagonal), so causal work is balanced.
      for (int qi = 0; qi < nc; ++qi)
        for (int ki = 0; ki < nc; ++ki) {
          bool visible = false;
          const Tensor mask = block_mask(mine[qi], theirs[ki], C, window, qs[qi], visible);
          if (!visible) continue;
          const Tensor s = scores(qs[qi], ks[ki], mask, scale);
          const Tensor mb = ag::max(s, -1, /*keepdim=*/true);
          const Tensor p = ag::exp(ag::sub(s, mb));
          const Tensor lb = ag::sum(p, {-1}, true), ob = ag::matmul(p, vs[ki]);
          if (!num[qi].defined()) {
            num[qi] = ob, den[qi] = lb, mx[qi] = mb;
          } else {
            const Tensor mn = ag::maximum(mx[qi], mb);
            const Tensor a = ag::exp(ag::sub(mx[qi], mn)), c = ag::exp(ag::sub(mb, mn));
            num[qi] = ag::add(ag::mul(num[qi], a), ag::mul(ob, c));
            den[qi] = ag::add(ag::mul(den[qi], a), ag::mul(lb, c));
            mx[qi] = mn;
          }
        }
      if (j + 1 < P) {
        auto kv = next.wait();
        kb = kv[0], vb = kv[1];
      }
    }
    // Step 0 holds every query chunk's own (diagonal) chunk, which its rows see: all defined.
    std::vector<Tensor> outs, lses;
    for (int qi = 0; qi < nc; ++qi) {
      outs.push_back(ag::div(num[qi], den[qi]));
      lses.push_back(ag::add(mx[qi], ag::log(den[qi])));
    }
    out = join_chunks(outs).contiguous();
    lse = join_chunks(lses).contiguous();
  }
  return ag::record("ring_attention", out, {q, k, v},
                    [q = q.detach(), k = k.detach(), v = v.detach(), out, lse, scale, window, comm, H, Hkv, nc, C,
                     zigzag](const std::vector<Tensor>& g, const std::vector<bool>&) {
                      ag::NoGradGuard ng;
                      const int P = comm->size(), r = comm->rank();
                      const std::vector<int64_t> mine = rank_chunks(r, P, zigzag);
                      const Tensor go = g[0].contiguous();
                      const Tensor delta = ag::sum(ag::mul(go, out), {-1}, true);  // rowsum(dO o O)
                      const std::vector<Tensor> qs = split_chunks(q.contiguous(), nc), gos = split_chunks(go, nc),
                                                deltas = split_chunks(delta.contiguous(), nc),
                                                lses = split_chunks(lse, nc);
                      std::vector<Tensor> dq;
                      for (const Tensor& x : qs) dq.push_back(Tensor::zeros(x.shape(), x.dtype(), x.device()));
                      Tensor kb = k.contiguous(), vb = v.contiguous();
                      std::vector<Tensor> dk = split_chunks(Tensor::zeros(kb.shape(), kb.dtype(), kb.device()), nc),
                                          dv = split_chunks(Tensor::zeros(vb.shape(), vb.dtype(), vb.device()), nc);
                      for (int j = 0; j < P; ++j) {
                        const int src = (r - j + P) % P;
                        // K and V travel on while this block's gradients are computed; the
                        // gradient buffers follow once they hold this block's share.
                        Shift next_kv;
                        if (j + 1 < P) next_kv = start_shift({kb, vb}, {kTagK, kTagV}, *comm);
                        const std::vector<int64_t> theirs = rank_chunks(src, P, zigzag);
                        const std::vector<Tensor> ks = split_chunks(expand_heads(kb, H), nc),
                                                  vs = split_chunks(expand_heads(vb, H), nc);
                        for (int qi = 0; qi < nc; ++qi)
                          for (int ki = 0; ki < nc; ++ki) {
                            bool visible = false;
                            const Tensor mask = block_mask(mine[qi], theirs[ki], C, window, qs[qi], visible);
                            if (!visible) continue;
                            const Tensor p = ag::exp(ag::sub(scores(qs[qi], ks[ki], mask, scale), lses[qi]));
                            const Tensor ds =
                                ag::mul(p, ag::sub(ag::matmul(gos[qi], vs[ki], false, true), deltas[qi]));
                            dq[qi] = ag::add(dq[qi], ag::mul(ag::matmul(ds, ks[ki]), scale));
                            dk[ki] = ag::add(dk[ki], reduce_heads(ag::mul(ag::matmul(ds, qs[qi], true, false), scale), Hkv));
                            dv[ki] = ag::add(dv[ki], reduce_heads(ag::matmul(p, gos[qi], true, false), Hkv));
                          }
                        // The gradient buffers move with their block; the P-th shift brings
                        // them home. K and V are not needed after the last step.
                        if (P > 1) {
                          auto d = shift({join_chunks(dk), join_chunks(dv)}, {kTagDK, kTagDV}, *comm);
                          dk = split_chunks(d[0], nc), dv = split_chunks(d[1], nc);
                        }
                        if (j + 1 < P) {
                          auto kv = next_kv.wait();
                          kb = kv[0], vb = kv[1];
                        }
                      }
                      return std::vector<Tensor>{join_chunks(dq), join_chunks(dk), join_chunks(dv)};
                    });
}

SequenceSlice zigzag_slice_sequence(const Tensor& ids, const Tensor& targets, int rank, int size,
                                    int64_t ignore_index, int64_t pad_id) {
  LATHE_CHECK(ids.dim() == 2 && ids.shape() == targets.shape())
      << "zigzag_slice_sequence: ids and targets must both be [B, T], got " << ids.shape_str() << " and "
      << targets.shape_str();
  LATHE_CHECK(size >= 1 && rank >= 0 && rank < size) << "zigzag_slice_sequence: rank " << rank << " of " << size;
  const int64_t B = ids.size(0), T = ids.size(1), n = 2 * static_cast<int64_t>(size);
  const int64_t Tp = (T + n - 1) / n * n, C = Tp / n;
  SequenceSlice s;
  s.padded_len = Tp;
  s.ids = Tensor::full({B, 2 * C}, static_cast<double>(pad_id), ids.dtype(), ids.device());
  s.targets = Tensor::full({B, 2 * C}, static_cast<double>(ignore_index), targets.dtype(), targets.device());
  const std::vector<int64_t> chunks = rank_chunks(rank, size, true);
  for (size_t i = 0; i < chunks.size(); ++i) {
    const int64_t at = chunks[i] * C, real = std::max<int64_t>(0, std::min(T, at + C) - at);
    s.spans.emplace_back(at, C);
    if (real == 0) continue;
    const int64_t to = static_cast<int64_t>(i) * C;
    s.ids.narrow(1, to, real).copy_(ids.narrow(1, at, real));
    s.targets.narrow(1, to, real).copy_(targets.narrow(1, at, real));
  }
  s.start = s.spans[0].first;
  return s;
}

void set_ring_attention(models::CausalLM& model, std::shared_ptr<Communicator> sp, bool zigzag) {
  if (!sp || sp->size() <= 1) {
    for_each_attention(model, "", [](models::Attention& a, const std::string&) { a.core = nullptr; });
    return;
  }
  for_each_attention(model, "", [&](models::Attention& a, const std::string&) {
    a.core = [sp, zigzag](const Tensor& q, const Tensor& k, const Tensor& v, double scale, int64_t window) {
      return ring_attention(q, k, v, scale, window, sp, zigzag);
    };
  });
}

void set_sequence_attention(models::CausalLM& model, std::shared_ptr<Communicator> sp, SpMode mode, bool zigzag) {
  if (mode == SpMode::ring) set_ring_attention(model, std::move(sp), zigzag);
  else if (mode == SpMode::ulysses) set_ulysses(model, std::move(sp));
}

}  // namespace lathe::parallel
