// Tensor parallelism composed with the LoRA family (peft/lora.h): shard_for_tensor_parallel
// (parallel/tensor_parallel.h) calls shard_lora_layer for a slot that holds an adapter, after
// the adapters were injected into the full model, so every factor is a slice of the
// one-process init (LoRA's kaiming A, LoRA-XS's weight SVD) and a TP run starts where TP=1 does.
//
// Column-parallel base (q/k/v, MLP fc/gate/up; W_i = rows of W): A [r, in] replicated, B_i =
// rows of B. y_i = x W_i^T + s B_i A x, with f on x once for both terms: in backward the
// input gradient W_i^T dy_i + s A^T B_i^T dy_i is summed by the base's own all-reduce.
// Row-parallel base (o_proj, MLP proj/down; W_i = columns of W): A_i = columns of A, B [out, r]
// replicated. partial_i = x_i W_i^T + s B A_i x_i, and g sums it (sum_i B A_i x_i = B A x since B
// is the same on every rank): the adapter joins the base's partial sum before the one all-reduce.
//
// Why no all-reduce of the r-wide intermediate (tokens x r per layer per micro-batch): the
// replicated factor's gradient is then a partial sum instead (column: dA = s (B_i^T dy_i) x^T,
// row: dB = s dy (A_i x_i)^T; LoRA-XS's R in both), summed once per optimizer step by the
// existing partial-gradient all-reduce (TensorParallelShards::partial_grad, as the Ladder
// row-parallel biases): r x in or out x r elements per layer per step, independent of the
// number of tokens and of gradient accumulation, and no extra collective on the forward path.
// After it the replicated factors' gradients are identical on every TP rank.
//
// Dropout on the adapter input: the column input is replicated (the one-process mask); a row
// input is this rank's columns, so the whole one-process mask is drawn (the same stream
// offsets on every rank) and this rank's columns of it applied.
//
// Supported: LoRA (rsLoRA, dropout, bias modes), LoRA-XS (LoRA-SB with the weight-SVD init),
// SoRA (its gate [r] replicated: gating is elementwise on the r-wide intermediate, so the
// row-parallel partials can be gated before the sum; the gate's gradient is a partial sum like
// A's or B's, and the proximal step then runs identically on every rank), LoRA-SB with its
// gradient init (train/peft_setup.h: each base weight's gradient slices gathered whole over TP,
// the one-process SVD, each rank keeping its slices of A and B), NOLA (the coefficients whole;
// each rank generates the bases of the whole matrices, as one process does, and uses its slice
// of their combinations: exact, but no saving in basis generation). Refused with a message
// naming the method: SpIEL (its indices, drop and regrowth address whole matrices;
// configs/validate.cpp), and adapters on the vocabulary head (its rows are padded).
#pragma once

#include <memory>
#include <string>

#include "models/model.h"
#include "parallel/tensor_parallel.h"
#include "peft/lora.h"

namespace lathe::parallel {

// Replaces the adapter at `path` (a full LoraLinear around a full Linear) by this rank's shard:
// the base becomes the local shard (column) or a non-reducing RowParallelLinear (row, bias
// added on rank 0 before the sum), the factors are sliced, and the region supplies f / g
// (Megatron-SP: gather / reduce-scatter; Ladder: the reduction is left to the model). Adds
// the sharded and partial-gradient names to `out`. Throws lathe::Error naming the layer and
// method when the adapter cannot be sharded.
void shard_lora_layer(models::CausalLM& model, const std::string& path, bool column, const CommPtr& comm,
                      bool seq_parallel, bool reduce_rows, TensorParallelShards& out);

}  // namespace lathe::parallel
