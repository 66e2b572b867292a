// ZeRO stage 1 (Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion
// Parameter Models", SC 2020): optimizer state sharded over the data-parallel group.
//
// Every rank keeps the full parameters (they are replicated, as in plain data parallelism), but
// each one updates only the part it owns, so only that part has optimizer state:
//   1. after the step's backward, the gradients of every trainable parameter are reduce-scattered
//      (mean over ranks): each rank receives the mean gradient of exactly what it owns;
//   2. each rank's optimizer, built over its owned pieces only (pieces()), steps them;
//   3. the updated pieces are all-gathered, so every replica holds every updated parameter again.
//
// Ownership comes in two forms (ZeroPartition), chosen per optimizer by the caller:
// - flat: the trainable parameters, concatenated in order, are cut into `size` equal ranges
//   (the last padded); a rank's pieces are 1-D views of the parameter storage. For optimizers
//   whose update is elementwise (AdamW in both forms, SGD with momentum): the arithmetic on a
//   piece is the one on the whole tensor, element for element.
// - per_parameter: every parameter is owned whole by one rank (the costliest first, onto the
//   least loaded rank; the cost is the caller's: the trainer passes each parameter's
//   optimizer-state bytes, since GaLore's state is not proportional to the size), and the rank's pieces are the parameters themselves. For optimizers that need
//   a whole tensor: GaLore and Fira project whole 2-D gradients, 8-bit blockwise AdamW
//   quantises whole blocks (and picks 8-bit by tensor size), SGD-SaI takes one g-SNR per
//   tensor. The shard sizes are then only as even as the parameter sizes allow.
// Both forms exchange one buffer of size * shard_numel() elements, rank r's block holding its
// pieces packed in parameter order (zero padding after them), with one reduce_scatter and one
// all_gather per step.
//
// Parameters with no gradient: a small all-reduce of one presence flag per parameter tells
// whether any rank had a gradient; a parameter that no rank had one for gets no gradient on
// its pieces (the optimizer skips it, as in one process); otherwise the missing ranks count
// as zeros, as in plain data parallelism.
//
// Gradient accumulation: gradients accumulate in the parameters' .grad over micro-batches as
// usual; reduce_scatter_gradients() runs once, after the last. Clipping uses the global norm:
// the squared norms of the owned pieces, summed over ranks (all_reduce_norm_sq()).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "parallel/communicator.h"

namespace lathe::parallel {

enum class ZeroPartition { flat, per_parameter };
const char* zero_partition_name(ZeroPartition p);  // "flat", "per-parameter"

// One contiguous range of one parameter owned by a rank.
struct ZeroPiece {
  size_t param = 0;     // index into the parameter list
  int64_t offset = 0;   // first element (row-major) of the range
  int64_t numel = 0;
  int64_t packed = 0;   // element offset inside the owner's block of the exchange buffer
};

// Who owns what: pure arithmetic on the parameter sizes, the same on every rank.
struct ZeroLayout {
  ZeroPartition partition = ZeroPartition::flat;
  int size = 1;
  int64_t shard_numel = 0;                    // elements per rank block (the largest shard)
  std::vector<std::vector<ZeroPiece>> ranks;  // per rank, its pieces in parameter order
  // The elements rank r owns.
  int64_t owned_numel(int r) const;
  // "ZeRO-1 over 2 data-parallel ranks, flat partition of 12345 elements (6173 per rank)":
  // what a checkpoint records and a resume compares.
  std::string describe() const;
};
// costs (per_parameter only; empty = the sizes) weigh the parameters for the bin packing.
ZeroLayout plan_zero_layout(const std::vector<int64_t>& param_numels, int size, ZeroPartition partition,
                            const std::vector<int64_t>& costs = {});

class ZeroSharder {
 public:
  // params: (name, tensor) of the trainable parameters in the same order on every rank; all of
  // one floating dtype and one device, contiguous leaves that require grad. comm: the
  // data-parallel group (shared with whoever else uses it).
  // costs: as for plan_zero_layout.
  ZeroSharder(std::vector<std::pair<std::string, Tensor>> params, std::shared_ptr<Communicator> comm,
              ZeroPartition partition, const std::vector<int64_t>& costs = {});
  ZeroSharder(const ZeroSharder&) = delete;
  ZeroSharder& operator=(const ZeroSharder&) = delete;

  // This rank's pieces, named after their parameters: per_parameter gives the parameters
  // themselves; flat gives 1-D leaf views into the parameter storage (an update of a piece
  // is an update of the parameter). Build the optimizer over these.
  const std::vector<std::pair<std::string, Tensor>>& pieces() const { return pieces_; }
  // Parameter index of each piece (same order as pieces()).
  size_t piece_param(size_t i) const { return layout_.ranks[static_cast<size_t>(comm_->rank())][i].param; }

  // Collective. Packs every parameter's .grad (zeros where undefined), releases the full
  // gradients, reduce-scatters the mean over ranks and sets it as the .grad of this rank's
  // pieces (views into one shard buffer). Pieces of a parameter no rank had a gradient for
  // get none.
  void reduce_scatter_gradients();
  // Collective: every rank's updated pieces into every replica's parameters. Also drops the
  // pieces' gradients and the shard buffer.
  void all_gather_parameters();
  // Collective: the sum over ranks of a 0-d squared norm (the global squared gradient norm
  // from each rank's pieces). For optim::clip_grad_norm's all_reduce_sq.
  void all_reduce_norm_sq(Tensor& sq) const;

  const ZeroLayout& layout() const { return layout_; }
  const std::shared_ptr<Communicator>& comm() const { return comm_; }

 private:
  std::vector<std::pair<std::string, Tensor>> params_;
  std::shared_ptr<Communicator> comm_;
  ZeroLayout layout_;
  std::vector<std::pair<std::string, Tensor>> pieces_;
  Tensor shard_grad_;  // this rank's block of the reduced gradients
  DType dtype_ = DType::f32;
  Device device_;
};

}  // namespace lathe::parallel
