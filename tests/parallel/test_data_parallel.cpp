// BucketReducer (parallel/data_parallel.h) in-process under mpirun (ctest runs -np 2 and
// -np 3). Every rank can compute every other rank's gradients (the inputs are a function of
// the rank), so the expected mean over ranks is computed locally in f64 and compared with
// what the reducer wrote into .grad; a plain per-tensor all-reduce is checked as well.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "autograd/autograd.h"
#include "core/memory.h"
#include "parallel/data_parallel.h"
#include "parallel/single_process_communicator.h"

namespace lathe::parallel {
namespace {

namespace ag = lathe::autograd;

std::shared_ptr<Communicator> world_comm() { return world(); }

using Named = std::vector<std::pair<std::string, Tensor>>;

// Indices:         0      1      2      3      4      5 (f64)  6 (never used)  7 (rank 0, micro 0 only)
const std::vector<std::pair<std::string, Shape>> kShapes = {
    {"a.w", {6, 5}}, {"a.b", {5}}, {"b.w", {5, 7}}, {"b.b", {7}}, {"c.w", {7, 3}}, {"d.s", {3}}, {"e.unused", {4, 4}},
    {"f.rank0", {3}}};

// The same initial values on every rank (a fixed seed), as fresh leaves.
Named make_params() {
  Generator gen(7);
  Named out;
  for (const auto& [name, shape] : kShapes) {
    Tensor t = Tensor::randn(shape, gen).to(name == "d.s" ? DType::f64 : DType::f32);
    t = ag::mul(t, 0.5).detach().contiguous();  // a fresh leaf
    t.set_requires_grad(true);
    out.emplace_back(name, t);
  }
  return out;
}

// Loss of rank r's micro-batch m: a 3-layer tanh chain, plus a parameter only rank 0 uses,
// and only in micro-batch 0.
Tensor chain_loss(const Named& p, int r, int m) {
  Generator gen(1000 + 10 * static_cast<uint64_t>(r) + static_cast<uint64_t>(m));
  Tensor x = Tensor::randn({4, 6}, gen);
  Tensor h0 = ag::tanh(ag::add(ag::matmul(x, p[0].second), p[1].second));
  Tensor h1 = ag::tanh(ag::add(ag::matmul(h0, p[2].second), p[3].second));
  Tensor y = ag::add(ag::matmul(h1, p[4].second), ag::cast(p[5].second, DType::f32));
  if (r == 0 && m == 0) y = ag::mul(y, p[7].second);
  return ag::mean(ag::square(y));
}

// Independent terms, one per used parameter, recorded in index order (forward = true) or in
// reverse: backward runs the latest recorded node first, so the gradient-ready order flips.
Tensor terms_loss(const Named& p, int r, bool forward) {
  std::vector<size_t> order = {0, 1, 2, 3, 4, 5};
  if (!forward) std::reverse(order.begin(), order.end());
  Tensor total;
  for (size_t k : order) {
    Tensor w = p[k].second.dtype() == DType::f32 ? p[k].second : ag::cast(p[k].second, DType::f32);
    Tensor term = ag::sum(ag::square(ag::tanh(ag::mul(w, 0.3 + 0.2 * r + 0.1 * static_cast<double>(k)))));
    total = total.defined() ? ag::add(total, term) : term;
  }
  return total;
}

// f64 copies of the gradients (empty vector = no gradient).
std::vector<std::vector<double>> grads_of(const Named& p) {
  std::vector<std::vector<double>> out;
  for (const auto& np : p) {
    Tensor g = np.second.grad();
    out.push_back(g.defined() ? g.to(DType::f64).contiguous().to_vector<double>() : std::vector<double>{});
  }
  return out;
}

// What one process computes for rank r: the gradients after `backward_for(params, r)`.
using Backward = std::function<void(const Named&, int)>;
std::vector<std::vector<double>> local_grads(int r, const Backward& backward_for) {
  Named p = make_params();
  backward_for(p, r);
  return grads_of(p);
}

// Mean over ranks in f64, a missing gradient counting as zero; empty when no rank had one.
std::vector<std::vector<double>> expected_mean(int size, const Backward& backward_for) {
  std::vector<std::vector<double>> sum(kShapes.size());
  for (int r = 0; r < size; ++r) {
    auto g = local_grads(r, backward_for);
    for (size_t k = 0; k < g.size(); ++k) {
      if (g[k].empty()) continue;
      if (sum[k].empty()) sum[k].assign(g[k].size(), 0.0);
      for (size_t i = 0; i < g[k].size(); ++i) sum[k][i] += g[k][i];
    }
  }
  for (auto& v : sum)
    for (double& x : v) x /= size;
  return sum;
}

void expect_grads_near(const Named& p, const std::vector<std::vector<double>>& want, double rtol) {
  auto got = grads_of(p);
  ASSERT_EQ(got.size(), want.size());
  for (size_t k = 0; k < got.size(); ++k) {
    SCOPED_TRACE(p[k].first);
    ASSERT_EQ(got[k].empty(), want[k].empty()) << (want[k].empty() ? "expected no gradient" : "missing gradient");
    ASSERT_EQ(got[k].size(), want[k].size());
    for (size_t i = 0; i < got[k].size(); ++i)
      EXPECT_NEAR(got[k][i], want[k][i], rtol * (std::abs(want[k][i]) + 1e-3)) << "element " << i;
  }
}

// 200-byte buckets over kShapes (see BucketsFollowReverseRegistrationOrder).
BucketReducerOptions small_buckets() {
  BucketReducerOptions o;
  o.bucket_mb = 200.0 / 1048576.0;
  return o;
}

// Forwards to the world communicator and records the element count of every all_reduce.
class RecordingComm : public Communicator {
 public:
  explicit RecordingComm(std::shared_ptr<Communicator> inner) : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string backend() const override { return "recording"; }
  WorkPtr all_reduce_async(const Tensor& t, ReduceOp op) override {
    numels.push_back(t.numel());
    return inner_->all_reduce_async(t, op);
  }
  WorkPtr reduce_scatter_async(const Tensor& in, const Tensor& out, ReduceOp op) override {
    return inner_->reduce_scatter_async(in, out, op);
  }
  WorkPtr all_gather_async(const Tensor& in, const Tensor& out) override { return inner_->all_gather_async(in, out); }
  WorkPtr all_to_all_async(const Tensor& in, const Tensor& out) override { return inner_->all_to_all_async(in, out); }
  WorkPtr broadcast_async(const Tensor& t, int root) override { return inner_->broadcast_async(t, root); }
  WorkPtr send_async(const Tensor& t, int dst, int tag) override { return inner_->send_async(t, dst, tag); }
  WorkPtr recv_async(const Tensor& t, int src, int tag) override { return inner_->recv_async(t, src, tag); }
  WorkPtr barrier_async() override { return inner_->barrier_async(); }
  std::shared_ptr<Communicator> split(int color, int key) override { return inner_->split(color, key); }
  std::vector<int64_t> numels;

 private:
  std::shared_ptr<Communicator> inner_;
};

TEST(BucketPlan, ReverseOrderCapacityAndOversizedTensors) {
  auto f32 = [](int64_t n) { return Tensor::zeros({n}); };
  // 40, 400, 40 bytes with a 100-byte cap: the big one alone, nothing merges across it.
  EXPECT_EQ(plan_buckets({f32(10), f32(100), f32(10)}, 100), (std::vector<std::vector<size_t>>{{2}, {1}, {0}}));
  EXPECT_EQ(plan_buckets({f32(10), f32(10), f32(10), f32(100)}, 100),
            (std::vector<std::vector<size_t>>{{3}, {2, 1}, {0}}));
  // Exactly at the cap still fits; one byte over does not.
  EXPECT_EQ(plan_buckets({f32(5), f32(5)}, 40), (std::vector<std::vector<size_t>>{{1, 0}}));
  EXPECT_EQ(plan_buckets({f32(5), f32(5)}, 39), (std::vector<std::vector<size_t>>{{1}, {0}}));
  // A dtype change closes the bucket.
  EXPECT_EQ(plan_buckets({f32(1), Tensor::zeros({1}, DType::f64), f32(1)}, 1000),
            (std::vector<std::vector<size_t>>{{2}, {1}, {0}}));
  EXPECT_THROW(plan_buckets({f32(1)}, 0), lathe::Error);
}

TEST(BucketReducer, BucketsFollowReverseRegistrationOrder) {
  Named p = make_params();
  BucketReducer red(p, world_comm(), small_buckets());
  // Bytes in reverse order: f.rank0 12, e.unused 64 | d.s (f64) 24 | c.w 84, b.b 28 | b.w 140, a.b 20 | a.w 120.
  std::vector<std::vector<size_t>> want = {{7, 6}, {5}, {4, 3}, {2, 1}, {0}};
  ASSERT_EQ(red.buckets().size(), want.size());
  for (size_t b = 0; b < want.size(); ++b) {
    EXPECT_EQ(red.buckets()[b].params, want[b]) << "bucket " << b;
    int64_t off = 0;
    for (size_t j = 0; j < want[b].size(); ++j) {
      EXPECT_EQ(red.buckets()[b].offsets[j], off);
      off += p[want[b][j]].second.numel();
    }
    EXPECT_EQ(red.buckets()[b].numel, off);
  }
  EXPECT_EQ(red.buckets()[1].dtype, DType::f64);
}

TEST(BucketReducer, MeanOverRanksWithAccumulationEqualsLocalReferenceAndPerTensorAllReduce) {
  auto comm = world_comm();
  const int r = comm->rank(), n = comm->size();
  // Two micro-batches of loss / 2, as the trainer does; only the last one communicates.
  Backward two_micro = [](const Named& p, int rank) {
    for (int m = 0; m < 2; ++m) ag::mul(chain_loss(p, rank, m), 0.5).backward();
  };
  Named p = make_params();
  BucketReducer red(p, comm, small_buckets());
  for (int step = 0; step < 2; ++step) {  // the reducer is reusable step after step
    for (auto& np : p) np.second.set_grad(Tensor());
    for (int m = 0; m < 2; ++m) {
      red.arm(m == 1);
      ag::mul(chain_loss(p, r, m), 0.5).backward();
    }
    red.finish();
    EXPECT_FALSE(red.armed());
    expect_grads_near(p, expected_mean(n, two_micro), 2e-6);
  }
  EXPECT_EQ(red.stats().syncs, 2);
  EXPECT_EQ(red.stats().buckets_early + red.stats().buckets_late, 2 * static_cast<int64_t>(red.buckets().size()));
  // f.rank0 (last micro-batch: no hook anywhere) and e.unused hold up bucket 0, which holds
  // up every later one: all start in finish().
  EXPECT_EQ(red.stats().buckets_late, 2 * static_cast<int64_t>(red.buckets().size()));

  // The same gradients through one blocking all_reduce per tensor.
  Named q = make_params();
  two_micro(q, r);
  for (auto& np : q) {
    Tensor g = np.second.grad();
    if (!g.defined()) {
      g = Tensor::zeros(np.second.shape(), np.second.dtype());
      np.second.set_grad(g);
    }
    comm->all_reduce(g, ReduceOp::avg);
  }
  for (size_t k = 0; k < p.size(); ++k) {
    SCOPED_TRACE(p[k].first);
    if (k == 6) {  // no rank had a gradient: the reducer leaves none, like one process
      EXPECT_FALSE(p[k].second.grad().defined());
      continue;
    }
    auto a = p[k].second.grad().to(DType::f64).to_vector<double>();
    auto b = q[k].second.grad().to(DType::f64).to_vector<double>();
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-6 * (std::abs(b[i]) + 1e-3));
  }
  // f.rank0: only rank 0's first micro-batch touched it, so every rank holds g0 / n.
  auto only0 = local_grads(0, [](const Named& pp, int) { ag::mul(chain_loss(pp, 0, 0), 0.5).backward(); });
  auto f = p[7].second.grad().to(DType::f64).to_vector<double>();
  for (size_t i = 0; i < f.size(); ++i) EXPECT_NEAR(f[i], only0[7][i] / n, 1e-6 * (std::abs(only0[7][i]) + 1e-3));
}

TEST(BucketReducer, HookOrderDiffersAcrossRanksBucketsStillStartInBucketOrder) {
  auto inner = world_comm();
  auto rec = std::make_shared<RecordingComm>(inner);
  const int r = inner->rank(), n = inner->size();
  // Leave out the parameters that get no gradient, so every bucket can start from a hook.
  Named all = make_params();
  Named p(all.begin(), all.begin() + 6);
  BucketReducerOptions o;
  o.bucket_mb = 130.0 / 1048576.0;  // reverse: d.s(f64) | c.w 84, b.b 28 | b.w 140 | a.b 20, a.w 120 -> 5 buckets
  BucketReducer red(p, rec, o);
  const std::vector<std::vector<size_t>> want = {{5}, {4, 3}, {2}, {1}, {0}};
  ASSERT_EQ(red.buckets().size(), want.size());
  for (size_t b = 0; b < want.size(); ++b) EXPECT_EQ(red.buckets()[b].params, want[b]);

  // Even ranks record the terms in index order (a.w's gradient is final first), odd ranks in
  // reverse (d.s first), as logged by hooks of the test's own.
  const bool forward = r % 2 == 0;
  std::vector<size_t> fired;
  std::vector<int64_t> ids;
  for (size_t k = 0; k < p.size(); ++k)
    ids.push_back(ag::add_grad_ready_hook(p[k].second, [&fired, k](const Tensor&) { fired.push_back(k); }));
  red.arm(true);
  terms_loss(p, r, forward).backward();
  const std::vector<int64_t> launched_in_backward = rec->numels;
  red.finish();
  for (size_t k = 0; k < p.size(); ++k) ag::remove_grad_ready_hook(p[k].second, ids[k]);
  const std::vector<size_t> forward_fire = {5, 4, 3, 2, 1, 0};  // latest recorded node first
  std::vector<size_t> reverse_fire = {0, 1, 2, 3, 4, 5};
  EXPECT_EQ(fired, forward ? forward_fire : reverse_fire);

  // Collectives in bucket order on every rank, whatever the hook order.
  std::vector<int64_t> bucket_sizes;
  for (const auto& b : red.buckets()) bucket_sizes.push_back(b.numel + static_cast<int64_t>(b.params.size()));
  EXPECT_EQ(rec->numels, bucket_sizes);
  // Every parameter had a gradient, so every bucket started from a hook, during backward.
  EXPECT_EQ(launched_in_backward, bucket_sizes);
  EXPECT_EQ(red.stats().buckets_early, static_cast<int64_t>(want.size()));
  EXPECT_EQ(red.stats().buckets_late, 0);

  Backward terms = [](const Named& pp, int rank) {
    Named used(pp.begin(), pp.begin() + 6);
    terms_loss(used, rank, true).backward();
  };
  auto want_mean = expected_mean(n, terms);
  want_mean.resize(6);
  expect_grads_near(p, want_mean, 2e-6);
}

TEST(BucketReducer, NoOverlapModeGivesTheSameGradients) {
  auto comm = world_comm();
  const int r = comm->rank(), n = comm->size();
  Named p = make_params();
  BucketReducerOptions o = small_buckets();
  o.overlap = false;
  BucketReducer red(p, comm, o);
  red.arm(true);
  chain_loss(p, r, 1).backward();
  red.finish();
  EXPECT_EQ(red.stats().buckets_early, 0);
  EXPECT_EQ(red.stats().buckets_late, static_cast<int64_t>(red.buckets().size()));
  expect_grads_near(p, expected_mean(n, [](const Named& pp, int rank) { chain_loss(pp, rank, 1).backward(); }), 2e-6);
}

TEST(BucketReducer, UnarmedBackwardAndFinishDoNothing) {
  auto comm = world_comm();
  auto rec = std::make_shared<RecordingComm>(comm);
  Named p = make_params();
  BucketReducer red(p, rec, small_buckets());
  red.arm(false);
  chain_loss(p, comm->rank(), 1).backward();
  auto before = grads_of(p);
  red.finish();
  EXPECT_TRUE(rec->numels.empty());
  EXPECT_EQ(grads_of(p), before);  // local, unaveraged gradients untouched
  EXPECT_EQ(red.stats().syncs, 0);
}

TEST(BucketReducer, SecondBackwardWithoutFinishIsAnErrorNamingTheParameter) {
  auto comm = world_comm();
  Named p = make_params();
  Named used(p.begin(), p.begin() + 6);
  BucketReducer red(used, comm, small_buckets());
  red.arm(true);
  terms_loss(used, comm->rank(), true).backward();
  try {
    terms_loss(used, comm->rank(), true).backward();
    FAIL() << "expected an error";
  } catch (const lathe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("d.s became ready twice"), std::string::npos) << e.what();
  }
  EXPECT_THROW(red.arm(true), lathe::Error);
  red.finish();  // every bucket had started (same on every rank), so this completes
}

TEST(BucketReducer, BadParametersAreRejected) {
  auto comm = std::make_shared<SingleProcessCommunicator>();
  Named p = make_params();
  Named dup = {p[0], {"a.w", p[1].second}};
  EXPECT_THROW(BucketReducer(dup, comm), lathe::Error);
  Named frozen = {{"x", Tensor::zeros({2})}};
  try {
    BucketReducer red(frozen, comm);
    FAIL() << "expected an error";
  } catch (const lathe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("parameter x"), std::string::npos) << e.what();
  }
  BucketReducerOptions zero;
  zero.bucket_mb = 0;
  EXPECT_THROW(BucketReducer(p, comm, zero), lathe::Error);
}

TEST(BucketReducer, SingleRankLeavesGradientsAsComputed) {
  auto comm = std::make_shared<SingleProcessCommunicator>();
  Named p = make_params();
  BucketReducer red(p, comm, small_buckets());
  red.arm(true);
  chain_loss(p, 0, 0).backward();
  auto before = grads_of(p);
  red.finish();
  EXPECT_EQ(grads_of(p), before);
  EXPECT_FALSE(p[6].second.grad().defined());
}

// Layer-wise mode (set_on_reduced): each parameter's mean goes to the function instead of
// into .grad, bit for bit the value the default mode writes into .grad (same buckets, same
// collectives); a parameter no rank had a gradient for is not handed over; no .grad is left.
// Two micro-batches, and f.rank0 has a gradient only from rank 0's first one (it goes into
// its bucket from the accumulated .grad in finish()).
TEST(BucketReducer, LayerwiseModeHandsOverTheMeansTheDefaultModeWrites) {
  auto comm = world_comm();
  const int r = comm->rank();
  Named q = make_params();
  {
    BucketReducer ref(q, comm, small_buckets());
    for (int m = 0; m < 2; ++m) {
      ref.arm(m == 1);
      ag::mul(chain_loss(q, r, m), 0.5).backward();
    }
    ref.finish();
  }
  Named p = make_params();
  BucketReducer red(p, comm, small_buckets());
  std::map<std::string, std::vector<double>> got;
  red.set_on_reduced([&](const std::string& name, const Tensor& param, const Tensor& mean) {
    EXPECT_FALSE(param.grad().defined()) << name << ": its own .grad should have been released when packed";
    EXPECT_TRUE(got.emplace(name, mean.to(DType::f64).to_vector<double>()).second) << name << " handed over twice";
  });
  for (int step = 0; step < 2; ++step) {  // reusable: the buffers come back for the next sync
    got.clear();
    for (int m = 0; m < 2; ++m) {
      red.arm(m == 1);
      ag::mul(chain_loss(p, r, m), 0.5).backward();
    }
    red.finish();
    for (size_t k = 0; k < p.size(); ++k) {
      SCOPED_TRACE(p[k].first);
      EXPECT_FALSE(p[k].second.grad().defined());
      const Tensor want = q[k].second.grad();
      ASSERT_EQ(got.count(p[k].first) == 1, want.defined());
      if (want.defined()) {
        EXPECT_EQ(got[p[k].first], want.to(DType::f64).to_vector<double>());
      }
    }
    EXPECT_EQ(got.size(), p.size() - 1);  // all but e.unused
  }
}

// Layer-wise mode on a chain of 8 layers, one bucket each (reverse order = the order backward
// finishes them): with max_in_flight 2, the gradient memory at any moment is at most the two
// buckets in flight, the one being filled and one parameter's .grad (released once packed):
// by construction, and well under the 8 buckets the default mode keeps. Launching bucket b
// hands over bucket b - 2 first, so at least 6 of the 8 go during backward.
TEST(BucketReducer, LayerwiseModeBoundsTheGradientMemory) {
  auto comm = world_comm();
  const int r = comm->rank();
  constexpr int kLayers = 8, kWidth = 8;
  Generator gen(11);
  Named p;
  for (int l = 0; l < kLayers; ++l) {
    Tensor w = ag::mul(Tensor::randn({kWidth, kWidth}, gen), 0.4).detach().contiguous();
    w.set_requires_grad(true);
    p.emplace_back("layer" + std::to_string(l), w);
  }
  const int64_t layer_bytes = kWidth * kWidth * 4, bucket_bytes = layer_bytes + 4;  // + its presence flag
  BucketReducerOptions o;
  o.bucket_mb = static_cast<double>(bucket_bytes) / 1048576.0;  // one layer per bucket
  BucketReducer red(p, comm, o);
  ASSERT_EQ(red.buckets().size(), static_cast<size_t>(kLayers));
  bool in_backward = false;
  int during = 0, total = 0;
  red.set_on_reduced([&](const std::string&, const Tensor&, const Tensor&) {
    during += in_backward;
    ++total;
  }, 2);
  Generator xg(50 + static_cast<uint64_t>(r));
  Tensor h = Tensor::randn({3, kWidth}, xg);
  for (const auto& np : p) h = ag::tanh(ag::matmul(h, np.second));
  Tensor loss = ag::mean(ag::square(h));
  const int64_t base = memory_stats().current_of(MemCategory::gradients);
  reset_peak_memory();
  red.arm(true);
  in_backward = true;
  loss.backward();
  in_backward = false;
  red.finish();
  const int64_t peak = memory_stats().peak_of(MemCategory::gradients) - base;
  EXPECT_EQ(total, kLayers);
  EXPECT_GE(during, kLayers - 2);
  EXPECT_EQ(red.stats().handed_over, kLayers);
  EXPECT_EQ(red.stats().handed_over_early, during);
  EXPECT_LE(peak, 3 * bucket_bytes + layer_bytes);
  EXPECT_GT(peak, 0);
  EXPECT_LT(3 * bucket_bytes + layer_bytes, kLayers * layer_bytes);  // the bound is a real saving
  EXPECT_EQ(memory_stats().current_of(MemCategory::gradients), base);  // every buffer released
  EXPECT_THROW(red.set_on_reduced({}, 0), lathe::Error);
}

TEST(Replicas, BroadcastMakesThemIdenticalAndTheCheckNamesTheFirstDifference) {
  auto comm = world_comm();
  const int r = comm->rank();
  Generator gen(50 + r);  // rank-dependent values
  Named t = {{"same", Tensor::ones({3, 2})}, {"x", Tensor::randn({4}, gen)}, {"y", Tensor::randn({2, 2}, gen)}};
  Tensor y0;
  {
    Generator g0(50);
    Tensor::randn({4}, g0);
    y0 = Tensor::randn({2, 2}, g0);  // rank 0's y
  }
  if (comm->size() > 1) {
    try {
      check_replicas_identical(t, *comm, "test tensors");
      FAIL() << "expected the check to fail";
    } catch (const lathe::Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("test tensors differ between ranks, first at x ([4]"), std::string::npos) << msg;
      EXPECT_NE(msg.find("2 of 3 tensors differ"), std::string::npos) << msg;
    }
  }
  // A non-contiguous view is written back through its staging copy.
  Tensor yt = t[2].second.transpose(0, 1);
  broadcast_tensors({t[1].second, yt}, *comm, 0);
  EXPECT_NO_THROW(check_replicas_identical(t, *comm, "test tensors"));
  EXPECT_EQ(t[2].second.to_vector<float>(), y0.to_vector<float>());
}

TEST(Replicas, ChecksumSeesEveryBitAndTheShape) {
  Tensor a = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  const uint64_t h = tensor_checksum(a);
  EXPECT_EQ(h, tensor_checksum(a.clone()));
  EXPECT_EQ(h, tensor_checksum(a.transpose(0, 1).contiguous().transpose(0, 1)));  // same values, other layout
  EXPECT_NE(h, tensor_checksum(a.view({3, 2})));
  EXPECT_NE(h, tensor_checksum(a.to(DType::f64)));
  for (int bit = 0; bit < 32; ++bit) {
    Tensor b = a.clone();
    uint32_t* w = static_cast<uint32_t*>(b.raw_data()) + 5;
    *w ^= 1u << bit;
    EXPECT_NE(h, tensor_checksum(b)) << "bit " << bit;
  }
}

}  // namespace
}  // namespace lathe::parallel
