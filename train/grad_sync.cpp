// Data-parallel glue of the trainer; see grad_sync.h.
#include "train/grad_sync.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "core/memory.h"

namespace lathe::train {

namespace {

bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::string(v) != "0";
}

// A positive integer from the environment, or 0 when unset; anything else is an error (a
// test that sets the variable wrongly must not silently pass).
int64_t env_int(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return 0;
  char* end = nullptr;
  const long long n = std::strtoll(v, &end, 10);
  LATHE_CHECK(end && *end == '\0' && n >= 0) << name << " must be a non-negative integer, got '" << v << "'";
  return n;
}

}  // namespace

GradSync::GradSync(const std::vector<std::pair<std::string, Tensor>>& params,
                   std::shared_ptr<parallel::Communicator> comm, double bucket_mb) {
  LATHE_CHECK(comm != nullptr) << "GradSync: no communicator";
  // No parameters: someone else synchronizes the gradients (ZeRO's reduce-scatter).
  if (comm->size() <= 1 || params.empty()) return;
  parallel::BucketReducerOptions o;
  o.bucket_mb = bucket_mb;
  o.overlap = !env_flag("LATHE_DP_NO_OVERLAP");
  reducer_ = std::make_unique<parallel::BucketReducer>(params, std::move(comm), o);
  print_stats_ = env_flag("LATHE_DP_STATS");
}

GradSync::~GradSync() {
  if (reducer_ && print_stats_) {
    std::fprintf(stderr, "lathe dp: %s\n", stats_line().c_str());
    std::fflush(stderr);
  }
}

void GradSync::before_backward(bool last_micro_batch) {
  if (reducer_) reducer_->arm(last_micro_batch);
}

void GradSync::after_backward() {
  if (reducer_) reducer_->finish();
}

void GradSync::set_on_reduced(parallel::BucketReducer::ReducedFn fn) {
  if (reducer_) reducer_->set_on_reduced(std::move(fn));
}

std::string GradSync::stats_line() const {
  if (!reducer_) return "one rank: no gradient communication";
  const auto& s = reducer_->stats();
  const double n = s.syncs > 0 ? static_cast<double>(s.syncs) : 1.0;
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "rank %d: %lld syncs of %zu buckets (%lld started during backward, %lld after, %lld complete before "
                "backward ended), %.3f MB/sync, overlap %s; per sync: backward %.3f ms, exposed communication "
                "%.3f ms (of which waiting %.3f ms)",
                reducer_->comm()->rank(), static_cast<long long>(s.syncs), reducer_->buckets().size(),
                static_cast<long long>(s.buckets_early), static_cast<long long>(s.buckets_late),
                static_cast<long long>(s.buckets_done_early), s.bytes / n / 1e6,
                env_flag("LATHE_DP_NO_OVERLAP") ? "off" : "on",
                s.backward_s / n * 1e3, s.finish_s / n * 1e3,
                s.wait_s / n * 1e3);
  std::string line = buf;
  if (s.handed_over > 0) {
    std::snprintf(buf, sizeof buf,
                  "; layer-wise: %lld parameter updates from reduced buckets (%lld during backward), hooks waited "
                  "%.3f ms per sync for a bucket in flight",
                  static_cast<long long>(s.handed_over), static_cast<long long>(s.handed_over_early),
                  s.room_wait_s / n * 1e3);
    line += buf;
  }
  return line;
}

void sync_initial_state(const autograd::Module& model, parallel::Communicator& comm, bool resumed) {
  if (comm.size() <= 1) return;
  auto named = model.named_parameters();
  if (resumed) {
    parallel::check_replicas_identical(named, comm, "the parameters loaded from the rank checkpoints");
    return;
  }
  std::vector<Tensor> tensors;
  for (const auto& np : named) tensors.push_back(np.second);
  for (const auto& nb : model.named_buffers()) tensors.push_back(nb.second);
  parallel::broadcast_tensors(tensors, comm, 0);
}

void sync_gradients(const std::vector<Tensor>& params, parallel::Communicator& comm) {
  if (comm.size() <= 1) return;
  for (const Tensor& p : params) {
    if (!p.requires_grad()) continue;
    Tensor g = p.grad();
    if (!g.defined()) {
      MemCategoryGuard guard(MemCategory::gradients);
      g = Tensor::zeros(p.shape(), p.dtype(), p.device());
      p.set_grad(g);
    }
    comm.all_reduce(g, parallel::ReduceOp::avg);
  }
}

int64_t count_targets(const Tensor& targets, int64_t ignore_index) {
  LATHE_CHECK(targets.device().is_cpu()) << "count_targets: the targets are on " << targets.device().str()
                                         << "; count the loader's host batch before moving it";
  const Tensor t = targets.dtype() == DType::i64 ? targets.contiguous() : targets.to(DType::i64).contiguous();
  const int64_t* d = t.data<int64_t>();
  int64_t n = 0;
  for (int64_t i = 0; i < t.numel(); ++i) n += d[i] != ignore_index;
  return n;
}

TokenWeights token_weights(std::vector<int64_t> local_tokens, parallel::Communicator& comm) {
  TokenWeights w;
  w.world = comm.size();
  w.local_tokens = std::move(local_tokens);
  int64_t local = 0;
  for (int64_t n : w.local_tokens) local += n;
  w.global_tokens = local;
  if (w.world > 1) {
    Tensor t = Tensor::from_vector<int64_t>({local}, {1});
    comm.all_reduce(t, parallel::ReduceOp::sum);
    w.global_tokens = t.to_vector<int64_t>()[0];
  }
  // n * N is an exact integer in a double, so with equal counts n * N / G rounds to exactly
  // what 1.0 / micro-batches does: packed-data runs keep their bits.
  for (int64_t n : w.local_tokens)
    w.loss_scale.push_back(w.global_tokens > 0 ? static_cast<double>(n * w.world) / static_cast<double>(w.global_tokens)
                                               : 0.0);
  return w;
}

double TokenWeights::global_mean_loss(const std::vector<double>& micro_losses, parallel::Communicator& comm) const {
  LATHE_CHECK(micro_losses.size() == local_tokens.size())
      << "TokenWeights::global_mean_loss: " << micro_losses.size() << " losses for " << local_tokens.size()
      << " micro-batches";
  // A micro-batch's mean times its count is its token sum (exact for an f32 loss and any
  // realistic count); a micro-batch without tokens adds nothing.
  double sum = 0;
  for (size_t m = 0; m < micro_losses.size(); ++m)
    if (local_tokens[m] > 0) sum += micro_losses[m] * static_cast<double>(local_tokens[m]);
  if (world > 1) {
    Tensor t = Tensor::from_vector<double>({sum}, {1});
    comm.all_reduce(t, parallel::ReduceOp::sum);
    sum = t.to_vector<double>()[0];
  }
  return global_tokens > 0 ? sum / static_cast<double>(global_tokens) : 0.0;
}

uint64_t rank_dropout_seed(uint64_t seed, int rank) {
  LATHE_CHECK(rank >= 0) << "rank_dropout_seed: rank must be >= 0, got " << rank;
  // Multiplication by an odd constant is a bijection of 64-bit integers: distinct ranks,
  // distinct keys.
  return seed ^ (static_cast<uint64_t>(rank) * 0xD1B54A32D192ED03ull);
}

void test_fault_injection(int64_t step, int rank) {
  static const int64_t die_at = env_int("LATHE_TEST_DIE_AT_STEP");
  static const int64_t hang_at = env_int("LATHE_TEST_HANG_AT_STEP");
  if (die_at == 0 && hang_at == 0) return;
  static const int64_t who = std::getenv("LATHE_TEST_DIE_RANK") ? env_int("LATHE_TEST_DIE_RANK") : 1;
  if (rank != who) return;
  if (step == die_at) {
    std::fprintf(stderr, "lathe: rank %d: LATHE_TEST_DIE_AT_STEP=%lld: exiting abruptly with code 3 (test only)\n",
                 rank, static_cast<long long>(step));
    std::fflush(stderr);
    std::_Exit(3);
  }
  if (step == hang_at) {
    std::fprintf(stderr, "lathe: rank %d: LATHE_TEST_HANG_AT_STEP=%lld: hanging (test only)\n", rank,
                 static_cast<long long>(step));
    std::fflush(stderr);
    std::this_thread::sleep_for(std::chrono::hours(1));
  }
}

}  // namespace lathe::train
