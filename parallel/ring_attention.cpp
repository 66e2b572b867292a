// Ring attention; see ring_attention.h.
#include "parallel/ring_attention.h"

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

Tensor ring_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale, int64_t window,
                      const std::shared_ptr<Communicator>& comm) {
  LATHE_CHECK(comm != nullptr) << "ring_attention: no communicator";
  LATHE_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && k.shape() == v.shape())
      << "ring_attention: expected q [B, H, T/P, D] and k, v [B, Hkv, T/P, D], got " << q.shape_str() << ", "
      << k.shape_str() << ", " << v.shape_str();
  const int64_t B = q.size(0), H = q.size(1), Tl = q.size(2), D = q.size(3), Hkv = k.size(1);
  LATHE_CHECK(k.size(0) == B && k.size(2) == Tl && k.size(3) == D && Hkv > 0 && H % Hkv == 0)
      << "ring_attention: q " << q.shape_str() << " and k " << k.shape_str()
      << " do not fit (the same batch, slice and head size; n_head a multiple of n_kv_head)";
  const int P = comm->size(), r = comm->rank();
  Tensor out, lse;
  {
    ag::NoGradGuard ng;
    const Tensor qc = q.detach().contiguous();
    Tensor kb = k.detach().contiguous(), vb = v.detach().contiguous();
    Tensor num, den, mx;  // running sum of exp(s - mx) v, sum of exp(s - mx), row max
    for (int j = 0; j < P; ++j) {
      const int src = (r - j + P) % P;
      // The next block travels while this one is computed.
      Shift next;
      if (j + 1 < P) next = start_shift({kb, vb}, {kTagK, kTagV}, *comm);
      bool visible = false;
      const Tensor mask = block_mask(r, src, Tl, window, qc, visible);
      if (visible) {
        const Tensor s = scores(qc, expand_heads(kb, H), mask, scale);
        const Tensor mb = ag::max(s, -1, /*keepdim=*/true);
        const Tensor p = ag::exp(ag::sub(s, mb));
        const Tensor lb = ag::sum(p, {-1}, true), ob = ag::matmul(p, expand_heads(vb, H));
        if (!num.defined()) {
          num = ob, den = lb, mx = mb;
        } else {
          const Tensor mn = ag::maximum(mx, mb);
          const Tensor a = ag::exp(ag::sub(mx, mn)), c = ag::exp(ag::sub(mb, mn));
          num = ag::add(ag::mul(num, a), ag::mul(ob, c));
          den = ag::add(ag::mul(den, a), ag::mul(lb, c));
          mx = mn;
        }
      }
      if (j + 1 < P) {
        auto kv = next.wait();
        kb = kv[0], vb = kv[1];
      }
    }
    // Step 0 is the diagonal block, which every row sees, so num is defined.
    out = ag::div(num, den).contiguous();
    lse = ag::add(mx, ag::log(den)).contiguous();
  }
  return ag::record("ring_attention", out, {q, k, v},
                    [q = q.detach(), k = k.detach(), v = v.detach(), out, lse, scale, window, comm, H, Hkv, Tl](
                        const std::vector<Tensor>& g, const std::vector<bool>&) {
                      ag::NoGradGuard ng;
                      const int P = comm->size(), r = comm->rank();
                      const Tensor qc = q.contiguous(), go = g[0].contiguous();
                      const Tensor delta = ag::sum(ag::mul(go, out), {-1}, true);  // rowsum(dO o O)
                      Tensor dq = Tensor::zeros(qc.shape(), qc.dtype(), qc.device());
                      Tensor kb = k.contiguous(), vb = v.contiguous();
                      Tensor dk = Tensor::zeros(kb.shape(), kb.dtype(), kb.device());
                      Tensor dv = Tensor::zeros(vb.shape(), vb.dtype(), vb.device());
                      for (int j = 0; j < P; ++j) {
                        const int src = (r - j + P) % P;
                        // K and V travel on while this block's gradients are computed; the
                        // gradient buffers follow once they hold this block's share.
                        Shift next_kv;
                        if (j + 1 < P) next_kv = start_shift({kb, vb}, {kTagK, kTagV}, *comm);
                        bool visible = false;
                        const Tensor mask = block_mask(r, src, Tl, window, qc, visible);
                        if (visible) {
                          const Tensor ke = expand_heads(kb, H), ve = expand_heads(vb, H);
                          const Tensor p = ag::exp(ag::sub(scores(qc, ke, mask, scale), lse));
                          const Tensor ds = ag::mul(p, ag::sub(ag::matmul(go, ve, false, true), delta));
                          dq = ag::add(dq, ag::mul(ag::matmul(ds, ke), scale));
                          dk = ag::add(dk, reduce_heads(ag::mul(ag::matmul(ds, qc, true, false), scale), Hkv));
                          dv = ag::add(dv, reduce_heads(ag::matmul(p, go, true, false), Hkv));
                        }
                        // The gradient buffers move with their block; the P-th shift brings
                        // them home. K and V are not needed after the last step.
                        if (j + 1 < P) {
                          auto d = shift({dk, dv}, {kTagDK, kTagDV}, *comm);
                          auto kv = next_kv.wait();
                          kb = kv[0], vb = kv[1], dk = d[0], dv = d[1];
                        } else if (P > 1) {
                          auto m = shift({dk, dv}, {kTagDK, kTagDV}, *comm);
                          dk = m[0], dv = m[1];
                        }
                      }
                      return std::vector<Tensor>{dq, dk, dv};
                    });
}

void set_ring_attention(models::CausalLM& model, std::shared_ptr<Communicator> sp) {
  if (!sp || sp->size() <= 1) {
    for_each_attention(model, "", [](models::Attention& a, const std::string&) { a.core = nullptr; });
    return;
  }
  for_each_attention(model, "", [&](models::Attention& a, const std::string&) {
    a.core = [sp](const Tensor& q, const Tensor& k, const Tensor& v, double scale, int64_t window) {
      return ring_attention(q, k, v, scale, window, sp);
    };
  });
}

void set_sequence_attention(models::CausalLM& model, std::shared_ptr<Communicator> sp, SpMode mode) {
  if (mode == SpMode::ring) set_ring_attention(model, std::move(sp));
  else if (mode == SpMode::ulysses) set_ulysses(model, std::move(sp));
}

}  // namespace lathe::parallel
