// Ulysses sequence parallelism (Jacobs et al., "DeepSpeed Ulysses: System Optimizations for
// Enabling Training of Extreme Long Sequence Transformer Models", 2023).
//
// The P ranks of a sequence-parallel group each hold a contiguous slice of the same sequences
// (slice_sequence). Everything but the attention core runs on the slice alone (embeddings,
// norms, MLP, the output head and the loss are per token). Around the attention core two
// all-to-alls re-shard the activations:
//   q, k, v [B, H, T/P, D] (all heads, the slice)  --seq_to_heads-->  [B, H/P, T, D]
// (the whole sequence, 1/P of the heads), plain causal attention on them (every position is
// visible, so the causal mask and a sliding window are the one-process ones), and
//   out [B, H/P, T, D]  --heads_to_seq-->  [B, H, T/P, D].
// Backward runs the reverse all-to-alls (an all-to-all is its own adjoint: block j of rank r
// goes to block r of rank j, so the gradient goes back the same way).
//
// Heads: H % P == 0. Grouped-query KV heads: Hkv % P == 0 splits them like the query heads;
// when Hkv < P and P % Hkv == 0 each KV head is replicated P / Hkv times first (DeepSpeed's
// kv_replication_factor), so each rank gets the one KV head its query heads use; gradients of
// the replicas sum back into the head. Anything else is an error naming the numbers.
//
// Sequence slicing (ALST, Bekman et al. 2025): the targets are shifted before slicing (the
// loader's targets[t] = ids[t + 1]), so a slice's last token keeps its label, the next slice's
// first token. T is padded to a multiple of P (pad id 0, label ignore_index, positions continue
// increasing); pad tokens come after every real token, so causal attention never lets a real
// token see them. Each rank's positions (learned or RoPE) start at its slice start
// (CausalLM::set_position_offset). The loss over the whole sequence is the token-weighted sum
// of the slices' mean losses: train/grad_sync.h's token weights do this across the ranks.
//
// With tensor parallelism the attention layers hold n_head / tp heads (parallel/tensor_parallel.h)
// and the rule above applies to those local heads: each TP rank runs its own all-to-alls over
// its sequence-parallel group (parallel/process_groups.h), and the local GQA grouping is the
// global one, so KV replication still gives each rank the KV head of its query heads.
//
// Weight gradients are partial per rank (each saw its own tokens) and are summed over the
// group, as data parallelism does; with the trainer's token weights, the data-parallel
// average over every rank is that sum.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "models/attention.h"
#include "models/model.h"
#include "parallel/communicator.h"

namespace lathe::parallel {

// Differentiable all-to-all along dim 0 (size divisible by comm.size()): block j goes to rank
// j, block j of the result came from rank j. Collective, also in backward.
Tensor all_to_all(const Tensor& x, const std::shared_ptr<Communicator>& comm);

// [B, H, T/P, D] sequence slices -> [B, H/P, T, D] head groups (rank r gets heads
// r*H/P .. (r+1)*H/P - 1 of every slice, the slices in rank order), and back.
Tensor seq_to_heads(const Tensor& x, const std::shared_ptr<Communicator>& comm);
Tensor heads_to_seq(const Tensor& x, const std::shared_ptr<Communicator>& comm);

// Causal attention of a sequence slice over the whole sequence: q [B, H, T/P, D], k, v
// [B, Hkv, T/P, D] in, [B, H, T/P, D] out. Checks the head rule above.
Tensor ulysses_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale, int64_t window,
                         const std::shared_ptr<Communicator>& comm);

// Makes every attention layer of `model` use ulysses_attention over `sp` (null or size 1:
// back to the plain kernel). Checks the heads of every layer first (lathe::Error naming the
// layer, the heads and the degree).
void set_ulysses(models::CausalLM& model, std::shared_ptr<Communicator> sp);

// Calls fn on every attention layer of m with its dotted name (set_ulysses, set_ring_attention).
void for_each_attention(autograd::Module& m, const std::string& prefix,
                        const std::function<void(models::Attention&, const std::string&)>& fn);

// The error for heads the rule above does not allow, or "" when it does.
std::string ulysses_heads_problem(int64_t n_head, int64_t n_kv_head, int sp);

// Rank `rank`'s slice of a batch of P slices: ids and targets [B, T] (targets already
// shifted), padded to T_pad = P * ceil(T / P); the slice is [B, T_pad / P] starting at `start`.
struct SequenceSlice {
  Tensor ids, targets;
  int64_t start = 0;
  int64_t padded_len = 0;
  // Zig-zag ring slices (parallel/ring_attention.h): (first position, length) of each chunk;
  // empty for a contiguous slice.
  std::vector<std::pair<int64_t, int64_t>> spans;
};
SequenceSlice slice_sequence(const Tensor& ids, const Tensor& targets, int rank, int size,
                             int64_t ignore_index = -100, int64_t pad_id = 0);

}  // namespace lathe::parallel
