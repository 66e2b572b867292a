// Ladder residual vs the standard block under tensor parallelism (a plain main, run under
// mpirun; every rank is one TP rank): training step time (forward + backward) and cached
// generation time per token, for the same Llama-style model, with the all-reduce latency the
// environment injects (LATHE_COMM_LATENCY_US, parallel/communicator.h). Figures and commands
// in bench/README.md; it measures and never asserts.
//
//   mpirun --allow-run-as-root --oversubscribe -np 2 -x LATHE_COMM_LATENCY_US=2000 build/bench/bench_ladder_tp
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "autograd/autograd.h"
#include "models/model.h"
#include "parallel/mpi_communicator.h"
#include "parallel/process_groups.h"
#include "parallel/tensor_parallel.h"

namespace {

using namespace lathe;

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

models::ModelSpec spec_for(bool ladder) {
  models::ModelSpec s;
  s.arch = models::Arch::llama;
  s.vocab_size = 512;
  s.n_layer = 8;
  s.n_head = 8;
  s.n_kv_head = 4;
  s.d_model = 256;
  s.d_ff = 768;
  s.max_seq_len = 256;
  s.bias = false;
  s.ladder_residual = ladder;
  return s;
}

struct Timing {
  double train_ms = 0, token_ms = 0;
};

Timing measure(bool ladder, const std::shared_ptr<parallel::Communicator>& tp, int iters, int tokens) {
  auto model = models::build_model(spec_for(ladder), 1);
  parallel::shard_for_tensor_parallel(*model, tp, 128);
  Generator g(3);
  std::vector<int64_t> v(4 * 64);
  for (auto& x : v) x = static_cast<int64_t>(g.uniform_double() * 512);
  Tensor ids = Tensor::from_vector<int64_t>(v, {4, 64});
  Timing t;
  for (int i = -1; i < iters; ++i) {  // one warm-up step
    tp->barrier();
    const double t0 = now();
    Tensor loss = model->loss(ids, ids);
    loss.backward();
    model->zero_grad();
    tp->barrier();
    if (i >= 0) t.train_ms += (now() - t0) * 1e3 / iters;
  }
  models::SampleOptions o;
  o.max_new_tokens = tokens;
  o.temperature = 0;
  models::generate(*model, {1, 2, 3, 4}, o);  // warm-up
  tp->barrier();
  const double t0 = now();
  models::generate(*model, {1, 2, 3, 4}, o);
  tp->barrier();
  t.token_ms = (now() - t0) * 1e3 / tokens;
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  auto world = lathe::parallel::init_mpi(&argc, &argv);
  const int iters = argc > 1 ? std::atoi(argv[1]) : 10;
  const int tokens = argc > 2 ? std::atoi(argv[2]) : 32;
  lathe::parallel::LayoutSpec ls;
  ls.tensor_parallel = world->size();
  lathe::parallel::ProcessGroups groups(world, ls);
  const char* lat = std::getenv("LATHE_COMM_LATENCY_US");
  Timing std_t = measure(false, groups.tp(), iters, tokens);
  Timing lad_t = measure(true, groups.tp(), iters, tokens);
  if (world->rank() == 0) {
    std::printf("tp %d, injected all-reduce latency %s us: train step (fwd+bwd, 4x64 tokens) standard %.2f ms, ladder "
                "%.2f ms (%.1f%% faster); generation per token standard %.3f ms, ladder %.3f ms (%.1f%% faster)\n",
                world->size(), lat ? lat : "0", std_t.train_ms, lad_t.train_ms,
                100 * (std_t.train_ms / lad_t.train_ms - 1), std_t.token_ms, lad_t.token_ms,
                100 * (std_t.token_ms / lad_t.token_ms - 1));
  }
  return 0;
}
