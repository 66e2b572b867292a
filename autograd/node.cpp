#include "autograd/node.h"

#include <atomic>

#include "autograd/meta.h"
#include "core/memory.h"
#include "kernels/ops.h"

namespace lathe::autograd {

namespace {
std::atomic<uint64_t> g_next_sequence_nr{0};
}

Node::Node(std::string name, std::vector<Edge> next_edges, std::vector<InputMeta> input_meta, uint32_t num_outputs)
    : name_(std::move(name)),
      next_edges_(std::move(next_edges)),
      input_meta_(std::move(input_meta)),
      num_outputs_(num_outputs),
      sequence_nr_(g_next_sequence_nr.fetch_add(1)) {
  LATHE_CHECK(input_meta_.size() == next_edges_.size())
      << "autograd node '" << name_ << "': " << input_meta_.size() << " input metas for " << next_edges_.size()
      << " edges";
}

Node::~Node() {
  // Take over every child that only this node keeps alive, then strip each such child's
  // own edges before it dies, so no destructor ever reaches further than one level.
  // Children shared with a live part of the graph keep their edges (they are not dying).
  std::vector<std::shared_ptr<Node>> stack;
  auto take_edges = [&stack](std::vector<Edge>& edges) {
    for (Edge& e : edges)
      if (e.node && e.node.use_count() == 1) stack.push_back(std::move(e.node));
    edges.clear();
  };
  take_edges(next_edges_);
  while (!stack.empty()) {
    std::shared_ptr<Node> n = std::move(stack.back());
    stack.pop_back();
    take_edges(n->next_edges_);
    // n dies here with no edges; its saved tensors go with it.
  }
}

FunctionNode::FunctionNode(std::string name, std::vector<Edge> next_edges, std::vector<InputMeta> input_meta,
                           uint32_t num_outputs, BackwardFn fn)
    : Node(std::move(name), std::move(next_edges), std::move(input_meta), num_outputs), fn_(std::move(fn)) {}

std::vector<Tensor> FunctionNode::apply(std::vector<Tensor>&& grads) {
  LATHE_CHECK(!released_) << "backward: trying to backward through the graph a second time: the saved tensors of op '"
                          << name() << "' were freed by the first backward; call backward(..., retain_graph=true) "
                          << "the first time to keep them";
  std::vector<bool> needs(next_edges().size());
  for (size_t i = 0; i < needs.size(); ++i) needs[i] = next_edges()[i].valid();
  std::vector<Tensor> out = fn_(grads, needs);
  LATHE_CHECK(out.size() == next_edges().size())
      << "backward of op '" << name() << "' returned " << out.size() << " gradients for " << next_edges().size()
      << " inputs";
  return out;
}

void FunctionNode::release() {
  fn_ = nullptr;  // drops the captures, i.e. the saved tensors
  released_ = true;
}

AccumulateGrad::AccumulateGrad(Tensor leaf)
    : Node("AccumulateGrad", {}, {}, 1), leaf_(std::move(leaf)) {}

// Whether g may become the leaf's gradient without a copy: nothing else can see it.
static bool can_steal(const Tensor& g, const Tensor& leaf) {
  return g.impl_ptr().use_count() == 1 && g.storage().use_count() == 1 && g.is_contiguous() && g.offset() == 0 &&
         g.storage()->nbytes() == g.nbytes() && g.dtype() == leaf.dtype() && g.shape() == leaf.shape() &&
         g.impl().autograd == nullptr;
}

std::vector<Tensor> AccumulateGrad::apply(std::vector<Tensor>&& grads) {
  LATHE_CHECK(grads.size() == 1) << "AccumulateGrad: expected one gradient";
  Tensor g = std::move(grads[0]);
  if (!g.defined()) return {};
  LATHE_CHECK(g.shape() == leaf_.shape())
      << "backward: gradient of shape " << g.shape_str() << " for a leaf of shape " << leaf_.shape_str();
  AutogradMeta& m = meta_of(leaf_);
  if (!m.grad.defined()) {
    if (can_steal(g, leaf_)) {
      g.storage()->set_category(MemCategory::gradients);
      m.grad = std::move(g);
    } else {
      MemCategoryGuard guard(MemCategory::gradients);
      Tensor fresh = Tensor::empty(leaf_.shape(), leaf_.dtype(), leaf_.device());
      fresh.copy_(g);
      m.grad = fresh;
    }
  } else {
    LATHE_CHECK(m.grad.shape() == leaf_.shape() && m.grad.dtype() == leaf_.dtype())
        << "backward: the existing .grad (" << m.grad.shape_str() << ", " << dtype_name(m.grad.dtype())
        << ") no longer matches its tensor (" << leaf_.shape_str() << ", " << dtype_name(leaf_.dtype())
        << "); zero_grad() after changing a parameter's data";
    // += semantics: gradients of successive backward calls add up until zeroed.
    kernels::add_(m.grad, g, 1.0);
  }
  // The gradient of this leaf is final for this backward: every contribution reached
  // this node before it became ready (the engine counts dependencies).
  // Every hook sees the same gradient even when one of them releases .grad (a layer-wise
  // update frees it once the parameter is stepped): this handle keeps it alive until the
  // last hook returns.
  const Tensor final_grad = m.grad;
  auto hooks = m.hooks;  // a hook may add or remove hooks
  for (auto& h : hooks) h.second(final_grad);
  return {};
}

}  // namespace lathe::autograd
