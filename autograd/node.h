// The tape: a Node is the backward of one recorded op. Its next edges point at the
// nodes that produced the op's differentiable inputs (another op's node, or the
// AccumulateGrad of a leaf); the engine (engine.h) walks them from the loss.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace lathe::autograd {

class Node;

// Where a gradient goes: output slot `input_nr` of `node` (null node = no gradient needed).
struct Edge {
  std::shared_ptr<Node> node;
  uint32_t input_nr = 0;
  bool valid() const { return node != nullptr; }
};

// Shape/dtype/device of a forward input, kept so the engine can check every gradient a
// backward produces (a wrong shape is a bug in that op's backward; the error names it).
struct InputMeta {
  Shape shape;
  DType dtype = DType::f32;
  Device device;
};

class Node : public std::enable_shared_from_this<Node> {
 public:
  Node(std::string name, std::vector<Edge> next_edges, std::vector<InputMeta> input_meta, uint32_t num_outputs);
  // Releases the graph below this node iteratively: a chain of N nodes (a deep model)
  // would otherwise be destroyed by N nested destructor calls and overflow the stack.
  virtual ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // grads[i] is the gradient of forward output i (undefined when none reached it);
  // returns one gradient per next edge (undefined = zero / not needed).
  virtual std::vector<Tensor> apply(std::vector<Tensor>&& grads) = 0;
  // Frees what the backward saved (retain_graph=false). Later apply() calls throw.
  virtual void release() {}
  virtual bool is_accumulate_grad() const { return false; }

  const std::string& name() const { return name_; }
  const std::vector<Edge>& next_edges() const { return next_edges_; }
  const std::vector<InputMeta>& input_meta() const { return input_meta_; }
  uint32_t num_outputs() const { return num_outputs_; }
  // Creation order; the engine runs later nodes first among those ready.
  uint64_t sequence_nr() const { return sequence_nr_; }

 private:
  std::string name_;
  std::vector<Edge> next_edges_;
  std::vector<InputMeta> input_meta_;
  uint32_t num_outputs_;
  uint64_t sequence_nr_;
};

// Backward of a recorded op as a closure: receives the output gradients and which inputs
// need a gradient, returns one gradient per input (undefined where not needed).
using BackwardFn =
    std::function<std::vector<Tensor>(const std::vector<Tensor>& grads, const std::vector<bool>& needs)>;

class FunctionNode : public Node {
 public:
  FunctionNode(std::string name, std::vector<Edge> next_edges, std::vector<InputMeta> input_meta,
               uint32_t num_outputs, BackwardFn fn);
  std::vector<Tensor> apply(std::vector<Tensor>&& grads) override;
  void release() override;

 private:
  BackwardFn fn_;  // owns the saved tensors through its captures
  bool released_ = false;
};

// The sink for a leaf: adds the incoming gradient into leaf.grad (allocated under
// MemCategory::gradients), then fires the leaf's gradient-ready hooks.
class AccumulateGrad : public Node {
 public:
  explicit AccumulateGrad(Tensor leaf);
  std::vector<Tensor> apply(std::vector<Tensor>&& grads) override;
  bool is_accumulate_grad() const override { return true; }
  const Tensor& leaf() const { return leaf_; }

 private:
  Tensor leaf_;
};

}  // namespace lathe::autograd
