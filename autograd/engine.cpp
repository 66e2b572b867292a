#include "autograd/engine.h"

#include <queue>
#include <unordered_map>

#include "autograd/grad_mode.h"
#include "autograd/meta.h"
#include "autograd/node.h"
#include "kernels/ops.h"

namespace lathe::autograd {

namespace {

struct NodeState {
  int dependencies = 0;
  std::vector<Tensor> grads;  // one per output of the node, summed as contributions arrive
};

// Ready-queue order: leaf sinks first (their hooks start communication early), then
// the latest recorded node.
struct ReadyOrder {
  bool operator()(const Node* a, const Node* b) const {
    if (a->is_accumulate_grad() != b->is_accumulate_grad()) return b->is_accumulate_grad();
    return a->sequence_nr() < b->sequence_nr();
  }
};

void add_into(std::vector<Tensor>& slots, uint32_t i, Tensor g) {
  if (!slots[i].defined()) {
    slots[i] = std::move(g);
  } else {
    slots[i] = kernels::binary(kernels::BinaryOp::add, slots[i], g);
  }
}

}  // namespace

void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& seeds, bool retain_graph) {
  LATHE_CHECK(seeds.empty() || seeds.size() == roots.size())
      << "backward: " << seeds.size() << " seeds for " << roots.size() << " roots";
  NoGradGuard no_grad;

  std::vector<Edge> root_edges;
  std::vector<Tensor> root_grads;
  for (size_t r = 0; r < roots.size(); ++r) {
    const Tensor& root = roots[r];
    LATHE_CHECK(root.defined()) << "backward: root " << r << " is undefined";
    LATHE_CHECK(root.requires_grad())
        << "backward: the tensor (shape " << root.shape_str()
        << ") does not require grad and has no grad_fn: no input of the computation requires grad, or it was "
           "computed under NoGradGuard";
    Tensor seed = seeds.empty() ? Tensor() : seeds[r];
    if (!seed.defined()) {
      LATHE_CHECK(root.numel() == 1)
          << "backward: the output has shape " << root.shape_str()
          << " (not a scalar); pass a seed gradient of that shape, e.g. y.backward(Tensor::ones(y.shape()))";
      seed = Tensor::ones(root.shape(), root.dtype(), root.device());
    } else {
      LATHE_CHECK(seed.shape() == root.shape())
          << "backward: seed of shape " << seed.shape_str() << " for an output of shape " << root.shape_str();
      if (seed.dtype() != root.dtype()) seed = seed.to(root.dtype());
      if (seed.device() != root.device()) seed = seed.to(root.device());
    }
    root_edges.push_back(gradient_edge(root));
    root_grads.push_back(seed);
  }

  // Count, for every reachable node, how many edges point at it.
  std::unordered_map<Node*, NodeState> state;
  std::vector<std::shared_ptr<Node>> keep_alive;  // nodes stay valid while we run
  std::vector<Node*> stack;
  auto visit = [&](const std::shared_ptr<Node>& n) {
    auto it = state.find(n.get());
    if (it == state.end()) {
      NodeState s;
      s.grads.resize(n->num_outputs());
      state.emplace(n.get(), std::move(s));
      keep_alive.push_back(n);
      stack.push_back(n.get());
    }
  };
  for (const Edge& e : root_edges) visit(e.node);
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const Edge& e : n->next_edges()) {
      if (!e.valid()) continue;
      visit(e.node);
      state[e.node.get()].dependencies++;
    }
  }

  for (size_t r = 0; r < root_edges.size(); ++r)
    add_into(state[root_edges[r].node.get()].grads, root_edges[r].input_nr, root_grads[r]);

  std::priority_queue<Node*, std::vector<Node*>, ReadyOrder> ready;
  for (auto& kv : state)
    if (kv.second.dependencies == 0) ready.push(kv.first);

  while (!ready.empty()) {
    Node* n = ready.top();
    ready.pop();
    NodeState& st = state[n];
    std::vector<Tensor> grads = std::move(st.grads);
    bool any = false;
    for (const Tensor& g : grads) any = any || g.defined();
    std::vector<Tensor> outs;
    if (any) outs = n->apply(std::move(grads));
    if (!retain_graph) n->release();
    const auto& edges = n->next_edges();
    for (size_t i = 0; i < edges.size(); ++i) {
      const Edge& e = edges[i];
      if (!e.valid()) continue;
      NodeState& next = state[e.node.get()];
      if (i < outs.size() && outs[i].defined()) {
        const InputMeta& im = n->input_meta()[i];
        const Tensor& g = outs[i];
        LATHE_CHECK(g.shape() == im.shape)
            << "backward of op '" << n->name() << "': gradient for input " << i << " has shape " << g.shape_str()
            << " but the input had shape " << lathe::shape_str(im.shape);
        LATHE_CHECK(g.dtype() == im.dtype)
            << "backward of op '" << n->name() << "': gradient for input " << i << " has dtype "
            << dtype_name(g.dtype()) << " but the input had dtype " << dtype_name(im.dtype);
        add_into(next.grads, e.input_nr, std::move(outs[i]));
      }
      if (--next.dependencies == 0) ready.push(e.node.get());
    }
  }
}

void backward(const Tensor& root, const Tensor& seed, bool retain_graph) {
  backward(std::vector<Tensor>{root}, std::vector<Tensor>{seed}, retain_graph);
}

void zero_grad(const std::vector<Tensor>& tensors, bool set_to_none) {
  for (const Tensor& t : tensors) {
    AutogradMeta* m = meta_if(t);
    if (!m || !m->grad.defined()) continue;
    if (set_to_none) {
      m->grad = Tensor();
    } else {
      m->grad.zero_();
    }
  }
}

}  // namespace lathe::autograd
