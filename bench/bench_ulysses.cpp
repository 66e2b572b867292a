// Longest trainable sequence with Ulysses sequence parallelism at a fixed memory budget (run
// under mpirun -np P; a plain main, figures in bench/README.md). One forward and backward of
// a LLaMA-style model on one sequence of T tokens split over the P ranks; a length fits when
// the allocator's peak (MemoryStats::total_peak: parameters, gradients and activations; no
// optimizer) stays within the budget on every rank. Search: T doubles from 128 until a length
// does not fit, then bisection between the last fit and the first miss, to a multiple of
// 32 * P tokens.
//
//   mpirun -np P build/bench/bench_ulysses [budget_mib] [d_model] [n_layer] [ulysses|ring]
// (ring: ring attention, parallel/ring_attention.h, instead of Ulysses' all-to-alls).
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "autograd/autograd.h"
#include "core/memory.h"
#include "models/model.h"
#include "parallel/mpi_communicator.h"
#include "parallel/ring_attention.h"
#include "parallel/ulysses.h"

using namespace lathe;

namespace {

// The largest peak over the ranks of one training step's forward and backward at length T.
int64_t peak_at(models::CausalLM& m, int64_t T, const std::shared_ptr<parallel::Communicator>& comm) {
  std::vector<int64_t> v(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) v[static_cast<size_t>(t)] = (t * 31 + 7) % 256;
  Tensor ids = Tensor::from_vector<int64_t>(v, {1, T});
  Tensor targets = Tensor::from_vector<int64_t>(v, {1, T});
  parallel::SequenceSlice s = parallel::slice_sequence(ids, targets, comm->rank(), comm->size());
  m.set_position_offset(s.start);
  for (const auto& p : m.parameters()) p.set_grad(Tensor());
  reset_peak_memory();
  m.loss(s.ids, s.targets).backward();
  int64_t peak = memory_stats().total_peak, mx = 0;
  MPI_Allreduce(&peak, &mx, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
  return mx;
}

}  // namespace

int main(int argc, char** argv) {
  auto comm = parallel::init_mpi(&argc, &argv);
  const int64_t budget = static_cast<int64_t>((argc > 1 ? std::atof(argv[1]) : 256.0) * 1048576.0);
  const int64_t d = argc > 2 ? std::atoi(argv[2]) : 256;
  const int64_t layers = argc > 3 ? std::atoi(argv[3]) : 8;
  const int P = comm->size();
  models::ModelSpec s;
  s.arch = models::Arch::llama;
  s.vocab_size = 256;
  s.n_layer = layers;
  s.n_head = 8;
  s.n_kv_head = 8;
  s.d_model = d;
  s.max_seq_len = 1 << 20;
  s.bias = false;
  auto m = models::build_model(s, 1);
  const bool ring = argc > 4 && std::string(argv[4]) == "ring";
  if (ring) parallel::set_ring_attention(*m, comm);
  else parallel::set_ulysses(*m, comm);
  const int64_t quantum = 32 * P;
  int64_t fit = 0, miss = 0;
  for (int64_t T = 128; miss == 0; T *= 2) {
    const int64_t Tq = (T + quantum - 1) / quantum * quantum;
    if (peak_at(*m, Tq, comm) <= budget)
      fit = Tq;
    else
      miss = Tq;
  }
  while (miss - fit > quantum) {
    const int64_t mid = (fit + miss) / 2 / quantum * quantum;
    if (mid <= fit) break;
    (peak_at(*m, mid, comm) <= budget ? fit : miss) = mid;
  }
  const int64_t at_fit = fit > 0 ? peak_at(*m, fit, comm) : 0;
  if (comm->rank() == 0)
    std::printf("%s sp %d, LLaMA d%lld L%lld (%lld params), budget %.0f MiB: longest sequence %lld tokens "
                "(peak %.1f MiB per rank; %lld tokens does not fit)\n",
                ring ? "Ring" : "Ulysses", P, static_cast<long long>(d), static_cast<long long>(layers),
                static_cast<long long>(m->num_parameters()), budget / 1048576.0, static_cast<long long>(fit),
                at_fit / 1048576.0, static_cast<long long>(miss));
  return 0;
}
