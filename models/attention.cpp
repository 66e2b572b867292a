#include "models/attention.h"

#include <algorithm>
#include <cmath>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"

namespace lathe::models {

namespace ag = lathe::autograd;

void KVCache::append(const Tensor& k_new, const Tensor& v_new, Tensor& k_all, Tensor& v_all) {
  LATHE_CHECK(k_new.dim() == 4 && k_new.shape() == v_new.shape())
      << "KVCache::append: k and v must both be [B, Hkv, T, D], got " << k_new.shape_str() << " and "
      << v_new.shape_str();
  LATHE_CHECK(!k_new.requires_grad() && !v_new.requires_grad())
      << "KVCache::append: the cache is for inference; run generation under autograd::NoGradGuard";
  const int64_t T = k_new.size(2), need = length + T;
  if (k.defined()) {
    LATHE_CHECK(k.size(0) == k_new.size(0) && k.size(1) == k_new.size(1) && k.size(3) == k_new.size(3) &&
                k.dtype() == k_new.dtype() && k.device() == k_new.device())
        << "KVCache::append: new keys " << k_new.shape_str() << " " << dtype_name(k_new.dtype())
        << " do not match the cache " << k.shape_str() << " " << dtype_name(k.dtype()) << " (reset() it first)";
  }
  if (need > capacity()) {
    int64_t cap = std::max({need, reserve, 2 * capacity()});
    Shape s = k_new.shape();
    s[2] = cap;
    Tensor nk = Tensor::zeros(s, k_new.dtype(), k_new.device());
    Tensor nv = Tensor::zeros(s, v_new.dtype(), v_new.device());
    if (length > 0) {
      nk.narrow(2, 0, length).copy_(k.narrow(2, 0, length));
      nv.narrow(2, 0, length).copy_(v.narrow(2, 0, length));
    }
    k = nk;
    v = nv;
  }
  k.narrow(2, length, T).copy_(k_new);
  v.narrow(2, length, T).copy_(v_new);
  length = need;
  k_all = k.narrow(2, 0, length);
  v_all = v.narrow(2, 0, length);
}

Attention::Attention(int64_t d_model, int64_t nh, int64_t nkv, int64_t hd, bool qkv_bias, bool o_bias)
    : n_head(nh), n_kv_head(nkv), head_dim(hd) {
  LATHE_CHECK(nh > 0 && nkv > 0 && hd > 0 && nh % nkv == 0)
      << "Attention: needs n_head, n_kv_head, head_dim > 0 and n_head divisible by n_kv_head, got " << nh << ", "
      << nkv << ", " << hd;
  q_proj = register_slot<LinearLayer>("q_proj", std::make_shared<Linear>(d_model, nh * hd, qkv_bias));
  k_proj = register_slot<LinearLayer>("k_proj", std::make_shared<Linear>(d_model, nkv * hd, qkv_bias));
  v_proj = register_slot<LinearLayer>("v_proj", std::make_shared<Linear>(d_model, nkv * hd, qkv_bias));
  o_proj = register_slot<LinearLayer>("o_proj", std::make_shared<Linear>(nh * hd, d_model, o_bias));
}

Attention::Attention(int64_t d_model, int64_t nh, int64_t nkv, bool bias, bool qkv_bias)
    : Attention(d_model, nh, nkv, nh > 0 ? d_model / nh : 0, bias || qkv_bias, bias) {}

Tensor Attention::forward(const Tensor& x, const Tensor& cos, const Tensor& sin, KVCache* cache) const {
  LATHE_CHECK(x.dim() == 3) << "Attention: x must be [B, T, C], got " << x.shape_str();
  Tensor q_out = q_proj->forward(x), k_out = k_proj->forward(x), v_out = v_proj->forward(x);
  // T from the projections: under Megatron sequence parallelism x is a sequence slice and the
  // (column-parallel) projections gather the whole sequence.
  const int64_t B = x.size(0), T = q_out.size(1);
  // [B, T, heads * D] -> [B, heads, T, D]
  auto heads = [&](const Tensor& t, int64_t h, const char* what) {
    LATHE_CHECK(t.size(-1) == h * head_dim) << "Attention: " << what << " gives " << t.size(-1) << " features, "
                                            << "expected " << h << " heads x " << head_dim;
    return ag::transpose(ag::view(t, {B, T, h, head_dim}), 1, 2);
  };
  Tensor q = heads(q_out, n_head, "q_proj");
  Tensor k = heads(k_out, n_kv_head, "k_proj");
  Tensor v = heads(v_out, n_kv_head, "v_proj");
  if (cos.defined()) {
    q = ag::rope(q, cos, sin);
    k = ag::rope(k, cos, sin);
  }
  if (cache) {
    Tensor k_all, v_all;
    cache->append(k, v, k_all, v_all);
    k = k_all;
    v = v_all;
    // With a window, no query of x sees a key before position S - T - window + 1 (the first
    // query's window start): attend over that tail only, so decoding costs O(window) per
    // token however long the cache grows. The kernel would mask those keys anyway.
    const int64_t S = k.size(2), drop = window > 0 ? std::max<int64_t>(S - T - window + 1, 0) : 0;
    if (drop > 0) {
      k = k.narrow(2, drop, S - drop);
      v = v.narrow(2, drop, S - drop);
    }
  }
  // Causal with S >= T keys: query t sees keys up to t + (S - T), i.e. its own position (and
  // with a window, the window - 1 before it).
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  Tensor y = core && !cache ? core(q, k, v, scale, window) : ag::attention(q, k, v, /*causal=*/true, scale, window);
  y = ag::reshape(ag::transpose(y, 1, 2), {B, T, n_head * head_dim});
  return o_proj->forward(y);
}

}  // namespace lathe::models
