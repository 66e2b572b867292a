// Ring attention (Liu et al., "Ring Attention with Blockwise Transformers for Near-Infinite
// Context", 2023) as a sequence-parallel attention core.
//
// The P ranks of a sequence-parallel group each hold a contiguous slice of the same sequences
// (parallel::slice_sequence, as Ulysses): q [B, H, T/P, D] and k, v [B, Hkv, T/P, D]. The key
// and value blocks travel around the ring (rank r sends to r + 1, receives from r - 1), so at
// step j rank r holds the block of rank r - j; the queries attend to each block as it passes
// and the partial results are merged with the online softmax (running row maximum and sum of
// exponentials, in the inputs' dtype). Causal attention skips every block that lies wholly in
// a rank's future (src > r) and masks the diagonal one; a sliding window masks by global
// positions. Grouped-query KV heads travel as they are (Hkv heads, not replicated).
//
// Backward recomputes each block's probabilities from the saved log-sum-exp: dQ stays on its
// rank, dK and dV accumulate in buffers that travel with their block and, after P shifts,
// arrive back at the block's owner.
//
// Every send/recv pair goes through the Communicator's async calls and its bounded waits, so
// a rank that dies or hangs ends the job with the communicator's timeout error.
//
// The next K/V block's transfer is posted before the current block is computed and waited on
// after it (forward and backward); on the CPU's MPI the transfer progresses only inside MPI
// calls, so how much it overlaps depends on the MPI library.
// Zig-zag (load-balanced causal) assignment, `zigzag` (parallel.ring_zigzag): with contiguous
// slices rank P - 1 computes P blocks and rank 0 one. Instead the sequence is cut into 2P
// chunks and rank r holds chunks r and 2P-1-r (zigzag_slice_sequence; the model's positions
// follow them, CausalLM::set_position_spans). Each step computes only the chunk pairs with a
// visible position: two of the four (three on the diagonal step, two of them halved by the
// mask), the same work on every rank.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "models/model.h"
#include "parallel/communicator.h"
#include "parallel/process_groups.h"
#include "parallel/ulysses.h"

namespace lathe::parallel {

// Causal attention of rank r's slice (positions r T/P .. (r+1) T/P - 1) over the whole sequence:
// q [B, H, T/P, D], k, v [B, Hkv, T/P, D] (H % Hkv == 0) -> [B, H, T/P, D]. Differentiable;
// collective over comm, also in backward.
// zigzag: rank r's slice is instead chunks r and 2P-1-r of T/(2P) positions each, in that
// order (T/P must be even).
Tensor ring_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale, int64_t window,
                      const std::shared_ptr<Communicator>& comm, bool zigzag = false);

// The global chunk indices rank r of P holds, in slice order: {r} (chunks of T/P), or with
// zigzag {r, 2P-1-r} (chunks of T/(2P)).
std::vector<int64_t> rank_chunks(int r, int P, bool zigzag);

// slice_sequence for zig-zag ring attention: the sequence (targets shifted first) padded to a
// multiple of 2 x size (pad_id, ignore_index), and this rank's chunks r and 2P-1-r side by
// side. spans holds their (first position, length) for CausalLM::set_position_spans; start
// is the first chunk's.
SequenceSlice zigzag_slice_sequence(const Tensor& ids, const Tensor& targets, int rank, int size,
                                    int64_t ignore_index = -100, int64_t pad_id = 0);

// Makes every attention layer of `model` use ring_attention over `sp` (null or size 1: back to
// the plain kernel).
void set_ring_attention(models::CausalLM& model, std::shared_ptr<Communicator> sp, bool zigzag = false);

// The attention core of a sequence-parallel group of its own: Ulysses (set_ulysses, which
// checks the heads) or ring attention, by `mode` (megatron: nothing, it lives in the TP layers).
void set_sequence_attention(models::CausalLM& model, std::shared_ptr<Communicator> sp, SpMode mode,
                            bool zigzag = false);

}  // namespace lathe::parallel
