#include "parallel/process_groups.h"

#include <sstream>

#include "core/error.h"
#include "parallel/single_process_communicator.h"

namespace lathe::parallel {

std::string layout_name(int dp, const LayoutSpec& s) {
  std::ostringstream o;
  o << "dp" << dp << " x tp" << s.tensor_parallel << " x sp" << s.sp_group_size();
  if (s.sp_mode == SpMode::megatron && s.sequence_parallel > 1) o << " megatron-sp";
  if (s.sp_mode == SpMode::ring && s.sequence_parallel > 1) o << " ring";
  return o.str();
}

std::vector<std::string> layout_errors(int world, const LayoutSpec& s) {
  std::vector<std::string> e;
  if (s.tensor_parallel < 1)
    e.push_back("parallel.tensor_parallel: must be >= 1 (got " + std::to_string(s.tensor_parallel) + ")");
  if (s.sequence_parallel < 1)
    e.push_back("parallel.sequence_parallel: must be >= 1 (got " + std::to_string(s.sequence_parallel) + ")");
  if (!e.empty()) return e;
  if (s.sp_mode == SpMode::megatron && s.sequence_parallel > 1 && s.sequence_parallel != s.tensor_parallel)
    e.push_back("parallel.sequence_parallel: MEGATRON sequence parallelism shards the sequence over the tensor-parallel "
                "group, so it must equal parallel.tensor_parallel (" +
                std::to_string(s.tensor_parallel) + ") or be 1 (got " + std::to_string(s.sequence_parallel) + ")");
  const int64_t cell = static_cast<int64_t>(s.tensor_parallel) * s.sp_group_size();
  if (world % cell != 0)
    e.push_back((s.own_sp_group() && s.sequence_parallel > 1 ? "parallel.sequence_parallel"
                                                                          : "parallel.tensor_parallel") +
                std::string(": the world of ") + std::to_string(world) +
                " ranks is not a multiple of tensor_parallel (" + std::to_string(s.tensor_parallel) + ")" +
                (s.own_sp_group() ? " x sequence_parallel (" + std::to_string(s.sequence_parallel) + ")"
                                              : std::string()) +
                " = " + std::to_string(cell) + "; world = data x tensor x sequence parallel ranks");
  return e;
}

ProcessGroups::Coord ProcessGroups::coord_of(int rank, int tp, int sp) {
  return Coord{rank / (tp * sp), (rank / tp) % sp, rank % tp};
}

int ProcessGroups::rank_of(const Coord& c, int tp, int sp) { return (c.dp * sp + c.sp) * tp + c.tp; }

ProcessGroups::ProcessGroups(std::shared_ptr<Communicator> world, const LayoutSpec& spec)
    : world_(std::move(world)), spec_(spec) {
  LATHE_CHECK(world_) << "ProcessGroups: no world communicator";
  const std::vector<std::string> errors = layout_errors(world_->size(), spec_);
  if (!errors.empty()) {
    std::string all;
    for (const auto& m : errors) all += (all.empty() ? "" : "\n") + m;
    throw lathe::Error("parallel layout", all);
  }
  const int tp = spec_.tensor_parallel, sp = spec_.sp_group_size();
  dp_size_ = world_->size() / (tp * sp);
  const Coord c = coord_of(world_->rank(), tp, sp);
  dp_rank_ = c.dp;
  sp_rank_ = c.sp;
  tp_rank_ = c.tp;
  // One split per group, in the same order on every rank. A color is the rank's position in
  // the other two dimensions; the key orders by the group's own coordinate.
  // A group of the whole world is the world itself and a group of one needs no communicator
  // of the backend (plain data parallelism keeps exactly the communicator it had, and no NCCL
  // communicator is created for an unused dimension); the decision depends on the sizes
  // only, so every rank makes the same splits.
  auto group = [&](int size, int color, int key) -> std::shared_ptr<Communicator> {
    if (size == world_->size()) return world_;
    if (size == 1) return std::make_shared<SingleProcessCommunicator>();
    auto g = world_->split(color, key);
    g->set_timeout(world_->timeout());
    return g;
  };
  tp_ = group(tp, c.dp * sp + c.sp, c.tp);
  sp_ = group(sp, c.dp * tp + c.tp, c.sp);
  dp_ = group(dp_size_, c.sp * tp + c.tp, c.dp);
}

}  // namespace lathe::parallel
