// Ulysses sequence parallelism (parallel/ulysses.h) and ring attention (parallel/ring_attention.h)
// under mpirun (ctest runs -np 2 and -np 4): the re-sharding all-to-alls against their formula
// and by f64 finite differences; ring attention's output and q/k/v gradients against full
// attention in f64 (GQA, sliding window) and by finite differences; and whole GPT-2 and Llama
// (GQA, RoPE) models with the sequence split over the ranks against one process on the same
// batch (losses and gradients, f32 tolerance), with a sequence length no group size divides.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <chrono>
#include <thread>
#include <vector>

#include "autograd/autograd.h"
#include "autograd/grad_mode.h"
#include "kernels/ops.h"
#include "models/model.h"
#include "parallel/ring_attention.h"
#include "tests/common/test_helpers.h"
#include "parallel/ulysses.h"

namespace lathe::parallel {
namespace {

namespace ag = lathe::autograd;

std::shared_ptr<Communicator> comm() { return world(); }

// A deterministic tensor, the same on every rank for the same seed.
Tensor randn(const Shape& s, uint64_t seed, DType dt = DType::f64) {
  Generator g(seed);
  return Tensor::randn(s, g).to(dt).contiguous();
}

TEST(Ulysses, SeqToHeadsIsTheHeadSliceOfTheWholeSequence) {
  auto c = comm();
  const int P = c->size(), r = c->rank();
  const int64_t B = 2, H = 2 * P, Tl = 3, D = 4;
  Tensor full = randn({B, H, P * Tl, D}, 5);
  Tensor mine = full.narrow(2, r * Tl, Tl).contiguous();
  Tensor heads = seq_to_heads(mine, c);
  ASSERT_EQ(heads.shape(), (Shape{B, H / P, P * Tl, D}));
  Tensor expect = full.narrow(1, r * (H / P), H / P).contiguous();
  EXPECT_EQ(heads.contiguous().to_vector<double>(), expect.to_vector<double>());
  // And back: the round trip is the identity.
  Tensor back = heads_to_seq(heads, c);
  EXPECT_EQ(back.contiguous().to_vector<double>(), mine.to_vector<double>());
}

// L = sum over ranks of <w_r, heads_to_seq(seq_to_heads(x_r) * s)>: the analytic gradient
// (every rank's backward, whose all-to-alls meet) against central differences of L, one
// element of one rank at a time (every rank evaluates L each time, so the collectives match).
TEST(Ulysses, AllToAllBackwardByFiniteDifferences) {
  auto c = comm();
  const int P = c->size(), r = c->rank();
  const int64_t B = 1, H = P, Tl = 2, D = 2;
  Tensor x = randn({B, H, Tl, D}, 100 + static_cast<uint64_t>(r));
  Tensor s = randn({B, 1, P * Tl, D}, 7);  // makes the head layout matter
  Tensor w = randn({B, H, Tl, D}, 200 + static_cast<uint64_t>(r));
  auto local = [&](const Tensor& in) {
    Tensor y = heads_to_seq(ag::mul(seq_to_heads(in, c), s), c);
    return ag::sum(ag::mul(y, w));
  };
  Tensor leaf = x.clone();
  leaf.set_requires_grad(true);
  local(leaf).backward();
  const std::vector<double> analytic = leaf.grad().contiguous().to_vector<double>();
  const double eps = 1e-6;
  double worst = 0;
  for (int p = 0; p < P; ++p)
    for (int64_t i = 0; i < x.numel(); ++i) {
      auto total = [&](double delta) {
        ag::NoGradGuard ng;
        Tensor xi = x.clone();
        if (r == p) xi.view({-1}).narrow(0, i, 1).fill_(x.to_vector<double>()[static_cast<size_t>(i)] + delta);
        Tensor l = local(xi).to(DType::f64).contiguous().reshape({1});
        c->all_reduce(l, ReduceOp::sum);
        return l.to_vector<double>()[0];
      };
      const double numeric = (total(eps) - total(-eps)) / (2 * eps);
      if (r == p) worst = std::max(worst, std::abs(numeric - analytic[static_cast<size_t>(i)]));
    }
  EXPECT_LT(worst, 1e-7);
}

models::ModelSpec spec(models::Arch arch, int64_t n_kv_head) {
  models::ModelSpec s;
  s.arch = arch;
  s.vocab_size = 64;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_kv_head = n_kv_head;
  s.d_model = 32;
  s.max_seq_len = 32;
  if (arch == models::Arch::llama) {
    s.bias = false;
    s.tie_embeddings = false;
  }
  return s;
}

// One batch [B, T] with targets shifted from a T + 1 token stream (the loader's layout).
void make_batch(int64_t B, int64_t T, int64_t V, Tensor& ids, Tensor& targets) {
  std::vector<int64_t> v;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t <= T; ++t) v.push_back((t * 7 + b * 13 + (t * t * 5) % 11) % V);
  Tensor stream = Tensor::from_vector<int64_t>(v, {B, T + 1});
  ids = stream.narrow(1, 0, T).contiguous();
  targets = stream.narrow(1, 1, T).contiguous();
  // A few ignored labels, as instruction data has.
  targets.narrow(1, 2, 1).fill_(-100);
}

struct Result {
  double loss;
  std::map<std::string, std::vector<double>> grads;
};

Result one_process(const models::ModelSpec& s, const Tensor& ids, const Tensor& targets) {
  auto m = models::build_model(s, 3);
  Tensor loss = m->loss(ids, targets);
  loss.backward();
  Result r{loss.item(), {}};
  for (const auto& [n, p] : m->named_parameters()) r.grads[n] = p.grad().to(DType::f64).contiguous().to_vector<double>();
  return r;
}

// The same batch sliced over the ranks: each rank's mean loss weighted by its share of the
// counted tokens, the gradients summed over the group.
Result sequence_parallel(const models::ModelSpec& s, const Tensor& ids, const Tensor& targets, bool ring,
                         bool zigzag = false) {
  auto c = comm();
  auto m = models::build_model(s, 3);
  if (ring) set_ring_attention(*m, c, zigzag);
  else set_ulysses(*m, c);
  SequenceSlice sl = zigzag ? zigzag_slice_sequence(ids, targets, c->rank(), c->size())
                            : slice_sequence(ids, targets, c->rank(), c->size());
  m->set_position_offset(sl.start);
  if (zigzag) m->set_position_spans(sl.spans);
  auto count = [](const Tensor& t) {
    int64_t n = 0;
    for (int64_t v : t.contiguous().to_vector<int64_t>()) n += v != -100;
    return n;
  };
  const int64_t mine = count(sl.targets), total = count(targets);
  Tensor loss = m->loss(sl.ids, sl.targets);
  ag::mul(loss, static_cast<double>(mine) / static_cast<double>(total)).backward();
  Tensor l = Tensor::from_vector<double>({loss.item() * static_cast<double>(mine) / static_cast<double>(total)}, {1});
  c->all_reduce(l, ReduceOp::sum);
  Result r{l.to_vector<double>()[0], {}};
  for (const auto& [n, p] : m->named_parameters()) {
    Tensor g = p.grad().contiguous().clone();
    c->all_reduce(g, ReduceOp::sum);
    r.grads[n] = g.to(DType::f64).to_vector<double>();
  }
  return r;
}

struct ModelCase {
  std::string name;
  models::Arch arch;
  int64_t n_kv_head;
  int64_t T;
  bool ring = false;
  bool zigzag = false;
};
void PrintTo(const ModelCase& c, std::ostream* os) { *os << c.name; }

class UlyssesModel : public ::testing::TestWithParam<ModelCase> {};

TEST_P(UlyssesModel, EqualsOneProcess) {
  const ModelCase& mc = GetParam();
  const models::ModelSpec s = spec(mc.arch, mc.n_kv_head);
  Tensor ids, targets;
  make_batch(2, mc.T, s.vocab_size, ids, targets);
  const Result ref = one_process(s, ids, targets);
  const Result sp = sequence_parallel(s, ids, targets, mc.ring, mc.zigzag);
  EXPECT_NEAR(sp.loss, ref.loss, 1e-5 * std::abs(ref.loss));
  ASSERT_EQ(sp.grads.size(), ref.grads.size());
  for (const auto& [n, g] : ref.grads) {
    const auto& h = sp.grads.at(n);
    ASSERT_EQ(h.size(), g.size()) << n;
    double worst = 0, scale = 1e-6;
    for (size_t i = 0; i < g.size(); ++i) {
      worst = std::max(worst, std::abs(g[i] - h[i]));
      scale = std::max(scale, std::abs(g[i]));
    }
    EXPECT_LT(worst, 1e-4 * scale) << n << " (largest |grad| " << scale << ")";
  }
}

INSTANTIATE_TEST_SUITE_P(Models, UlyssesModel,
                         ::testing::Values(ModelCase{"Gpt2_T13", models::Arch::gpt2, 0, 13},
                                           ModelCase{"Gpt2_T16", models::Arch::gpt2, 0, 16},
                                           ModelCase{"LlamaGqa_T13", models::Arch::llama, 2, 13},
                                           ModelCase{"LlamaMqa_T15", models::Arch::llama, 1, 15},
                                           ModelCase{"RingGpt2_T13", models::Arch::gpt2, 0, 13, true},
                                           ModelCase{"RingGpt2_T16", models::Arch::gpt2, 0, 16, true},
                                           ModelCase{"RingLlamaGqa_T13", models::Arch::llama, 2, 13, true},
                                           ModelCase{"RingLlamaMqa_T15", models::Arch::llama, 1, 15, true},
                                           ModelCase{"ZigzagGpt2_T13", models::Arch::gpt2, 0, 13, true, true},
                                           ModelCase{"ZigzagGpt2_T16", models::Arch::gpt2, 0, 16, true, true},
                                           ModelCase{"ZigzagLlamaGqa_T15", models::Arch::llama, 2, 15, true, true}),
                         [](const ::testing::TestParamInfo<ModelCase>& info) { return info.param.name; });

// Ring attention of each rank's slice against the slice of full causal attention (f64): the
// output and the gradients of q, k, v for L = sum over ranks <w_r, out_r>, with GQA (2 query
// heads per KV head) and with a sliding window that cuts across slices.
// Zig-zag: rank r's slice is chunks r and 2P-1-r of 2P (even slices of 4).
TEST(RingAttention, OutputAndGradientsEqualFullAttention) {
  auto c = comm();
  const int P = c->size(), r = c->rank();
  for (const bool zigzag : {false, true})
  for (const int64_t window : {int64_t{0}, int64_t{4}}) {
    SCOPED_TRACE(std::string(zigzag ? "zig-zag" : "contiguous") + ", window " + std::to_string(window));
    const int64_t B = 2, H = 4, Hkv = 2, Tl = zigzag ? 4 : 3, D = 4, T = P * Tl;
    Tensor q = randn({B, H, T, D}, 11), k = randn({B, Hkv, T, D}, 12), v = randn({B, Hkv, T, D}, 13);
    Tensor w = randn({B, H, T, D}, 14);
    for (Tensor* t : {&q, &k, &v}) t->set_requires_grad(true);
    ag::sum(ag::mul(ag::attention(q, k, v, true, 0.4, window), w)).backward();
    auto mine = [&](const Tensor& t) {
      if (!zigzag) return t.narrow(2, r * Tl, Tl).contiguous();
      const int64_t C = Tl / 2;
      return kernels::concat({t.narrow(2, r * C, C).contiguous(), t.narrow(2, (2 * P - 1 - r) * C, C).contiguous()}, 2);
    };
    Tensor ql = mine(q.detach()), kl = mine(k.detach()), vl = mine(v.detach());
    for (Tensor* t : {&ql, &kl, &vl}) t->set_requires_grad(true);
    Tensor out = ring_attention(ql, kl, vl, 0.4, window, c, zigzag);
    {
      ag::NoGradGuard ng;
      Tensor expect = mine(ag::attention(q.detach(), k.detach(), v.detach(), true, 0.4, window));
      EXPECT_LT(kernels::reduce(kernels::ReduceOp::max, ag::abs(ag::sub(out, expect)), {}, false).item(), 1e-12);
    }
    ag::sum(ag::mul(out, mine(w))).backward();
    const std::pair<Tensor*, Tensor*> pairs[] = {{&q, &ql}, {&k, &kl}, {&v, &vl}};
    for (const auto& [full, local] : pairs) {
      const auto a = local->grad().contiguous().to_vector<double>();
      const auto e = mine(full->grad()).to_vector<double>();
      ASSERT_EQ(a.size(), e.size());
      double worst = 0;
      for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - e[i]));
      EXPECT_LT(worst, 1e-12);
    }
  }
}

// Central differences of L = sum over ranks <w_r, ring(q_r, k_r, v_r)> for every element of
// one rank's k and v (the gradients that travel the ring home) and a few of its q.
TEST(RingAttention, BackwardByFiniteDifferences) {
  auto c = comm();
  const int P = c->size(), r = c->rank();
  const int64_t B = 1, H = 2, Hkv = 1, Tl = 2, D = 2;
  Tensor q = randn({B, H, Tl, D}, 300 + static_cast<uint64_t>(r)), k = randn({B, Hkv, Tl, D}, 400 + static_cast<uint64_t>(r)),
         v = randn({B, Hkv, Tl, D}, 500 + static_cast<uint64_t>(r)), w = randn({B, H, Tl, D}, 600 + static_cast<uint64_t>(r));
  auto local = [&](const Tensor& qq, const Tensor& kk, const Tensor& vv) {
    return ag::sum(ag::mul(ring_attention(qq, kk, vv, 0.7, 0, c), w));
  };
  Tensor lq = q.clone(), lk = k.clone(), lv = v.clone();
  for (Tensor* t : {&lq, &lk, &lv}) t->set_requires_grad(true);
  local(lq, lk, lv).backward();
  const int owner = 0;  // rank 0's block is seen by every rank, so its gradients come from all
  const double eps = 1e-6;
  double worst = 0;
  for (int which = 0; which < 3; ++which) {
    const Tensor& base = which == 0 ? q : which == 1 ? k : v;
    const std::vector<double> analytic = (which == 0 ? lq : which == 1 ? lk : lv).grad().contiguous().to_vector<double>();
    for (int64_t i = 0; i < base.numel(); ++i) {
      auto total = [&](double delta) {
        ag::NoGradGuard ng;
        Tensor x = base.clone();
        if (r == owner) x.view({-1}).narrow(0, i, 1).fill_(base.to_vector<double>()[static_cast<size_t>(i)] + delta);
        Tensor l = local(which == 0 ? x : q, which == 1 ? x : k, which == 2 ? x : v).to(DType::f64).contiguous().reshape({1});
        c->all_reduce(l, ReduceOp::sum);
        return l.to_vector<double>()[0];
      };
      const double numeric = (total(eps) - total(-eps)) / (2 * eps);
      if (r == owner) worst = std::max(worst, std::abs(numeric - analytic[static_cast<size_t>(i)]));
    }
  }
  EXPECT_LT(worst, 1e-7);
  (void)P;
}

// A ring peer that hangs: ranks 0 and 1 form a ring of their own (a communicator to sacrifice);
// rank 1 is busy outside MPI while rank 0's first K/V transfer waits, so the wait ends after
// the communicator's timeout with an error naming rank 0, the receive and the peer it waits on.
TEST(RingAttention, HungPeerEndsTheTransferWithinTheTimeoutNamingIt) {
  auto c = comm();
  auto ring = c->split(c->rank() < 2 ? 0 : 1, c->rank());
  Tensor q = randn({1, 2, 2, 2}, 1), k = randn({1, 1, 2, 2}, 2), v = randn({1, 1, 2, 2}, 3);
  if (c->rank() == 0) {
    ring->set_timeout(0.3);
    ring->set_timeout_action(TimeoutAction::throw_error);
    const auto t0 = std::chrono::steady_clock::now();
    const std::string e = test::error_of([&] { ring_attention(q, k, v, 0.5, 0, ring); });
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_NE(e.find("lathe: rank 0: recv #1 into f64 [1, 1, 2, 2] from rank 1"), std::string::npos) << e;
    EXPECT_NE(e.find("did not complete within 0.3 s"), std::string::npos) << e;
    EXPECT_LT(took, 1.5);
  } else if (c->rank() == 1) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2000));
    ring_attention(q, k, v, 0.5, 0, ring);  // completes: rank 0 posted its transfers before giving up
  }
  c->barrier();
}

// Zig-zag slices: T = 7 over 2 ranks pads to 8 = 4 chunks of 2; rank 0 holds chunks 0 and 3
// (positions 0, 1, 6, 7: the last one padding), rank 1 chunks 1 and 2.
TEST(RingAttention, ZigzagSliceHoldsChunksRAnd2PMinus1MinusR) {
  std::vector<int64_t> idv, tgv;
  for (int64_t t = 0; t < 7; ++t) {
    idv.push_back(10 + t);
    tgv.push_back(11 + t);
  }
  const Tensor ids = Tensor::from_vector<int64_t>(idv, {1, 7}), tg = Tensor::from_vector<int64_t>(tgv, {1, 7});
  const SequenceSlice a = zigzag_slice_sequence(ids, tg, 0, 2), b = zigzag_slice_sequence(ids, tg, 1, 2);
  EXPECT_EQ(a.ids.to_vector<int64_t>(), (std::vector<int64_t>{10, 11, 16, 0}));
  EXPECT_EQ(a.targets.to_vector<int64_t>(), (std::vector<int64_t>{11, 12, 17, -100}));
  EXPECT_EQ(b.ids.to_vector<int64_t>(), (std::vector<int64_t>{12, 13, 14, 15}));
  EXPECT_EQ(b.targets.to_vector<int64_t>(), (std::vector<int64_t>{13, 14, 15, 16}));
  EXPECT_EQ(a.spans, (std::vector<std::pair<int64_t, int64_t>>{{0, 2}, {6, 2}}));
  EXPECT_EQ(b.spans, (std::vector<std::pair<int64_t, int64_t>>{{2, 2}, {4, 2}}));
  EXPECT_EQ(a.padded_len, 8);
  EXPECT_EQ(rank_chunks(1, 4, true), (std::vector<int64_t>{1, 6}));
}

// The balance zig-zag buys: the chunk products a rank computes over the P ring steps (a pair
// is computed when some key is not in the query chunk's future: key chunk <= query chunk).
// Contiguous slices: rank r computes r + 1 (of equal size); zig-zag: every rank 2P + 1 (of
// half-size chunks, so 2P + 1 quarter-blocks, against P blocks on the last contiguous rank).
TEST(RingAttention, ZigzagGivesEveryRankTheSameCausalWork) {
  for (const int P : {2, 3, 4, 8}) {
    for (const bool zigzag : {false, true})
      for (int r = 0; r < P; ++r) {
        int computed = 0;
        for (int j = 0; j < P; ++j)
          for (int64_t qc : rank_chunks(r, P, zigzag))
            for (int64_t kc : rank_chunks((r - j + P) % P, P, zigzag)) computed += kc <= qc;
        EXPECT_EQ(computed, zigzag ? 2 * P + 1 : r + 1) << "P " << P << " rank " << r << (zigzag ? " zig-zag" : "");
      }
  }
}

TEST(Ulysses, SliceShiftsLabelsAcrossBoundariesAndPads) {
  // ids 0..6, targets 1..7: T = 7 over 4 ranks pads to 8, slices of 2.
  std::vector<int64_t> idv, tgv;
  for (int64_t t = 0; t < 7; ++t) {
    idv.push_back(10 + t);
    tgv.push_back(11 + t);
  }
  Tensor ids = Tensor::from_vector<int64_t>(idv, {1, 7}), targets = Tensor::from_vector<int64_t>(tgv, {1, 7});
  SequenceSlice s1 = slice_sequence(ids, targets, 1, 4);
  EXPECT_EQ(s1.start, 2);
  EXPECT_EQ(s1.padded_len, 8);
  EXPECT_EQ(s1.ids.to_vector<int64_t>(), (std::vector<int64_t>{12, 13}));
  EXPECT_EQ(s1.targets.to_vector<int64_t>(), (std::vector<int64_t>{13, 14}));  // 14: the next slice's first id
  SequenceSlice s3 = slice_sequence(ids, targets, 3, 4);
  EXPECT_EQ(s3.ids.to_vector<int64_t>(), (std::vector<int64_t>{16, 0}));
  EXPECT_EQ(s3.targets.to_vector<int64_t>(), (std::vector<int64_t>{17, -100}));
}

TEST(Ulysses, HeadsThatDoNotSplitAreAnError) {
  auto c = comm();
  const int P = c->size();
  EXPECT_EQ(ulysses_heads_problem(4 * P, P, P), "");
  EXPECT_EQ(ulysses_heads_problem(4 * P, 1, P), "");  // replicated
  EXPECT_NE(ulysses_heads_problem(3, 3, 2), "");
  EXPECT_NE(ulysses_heads_problem(12, 3, 4), "");  // 3 KV heads over 4 ranks
  models::ModelSpec s = spec(models::Arch::gpt2, 0);
  s.n_head = 2;
  s.d_model = 32;
  auto m = models::build_model(s, 1);
  if (P > 2) {
    try {
      set_ulysses(*m, c);
      ADD_FAILURE() << "2 heads over " << P << " ranks were accepted";
    } catch (const lathe::Error& e) {
      EXPECT_NE(std::string(e.what()).find("layers.0.attn"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace lathe::parallel
