// Process groups: the world split into a grid of data x tensor x sequence parallel ranks.
//
// Rank order (tensor-parallel ranks adjacent, since they talk every layer and should share
// the fastest links; then sequence-parallel; data-parallel outermost):
//   tp_rank = r % tp,  sp_rank = (r / tp) % sp,  dp_rank = r / (tp * sp)
// Each group is a Communicator::split of the world: tp() holds the tp ranks that share
// (dp_rank, sp_rank), sp() those that share (dp_rank, tp_rank), dp() those that share
// (tp_rank, sp_rank). There is no process-global parallel state: the trainer owns one
// ProcessGroups and every layer receives the communicator it uses.
//
// Megatron sequence parallelism runs inside the TP group (it shards the sequence over the TP
// ranks), so it adds no dimension: sp() is a group of one there, and megatron_sp() says it
// is on. Ulysses has a group of its own of size sequence_parallel.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace lathe::parallel {

enum class SpMode { megatron, ulysses, ring };

struct LayoutSpec {
  int tensor_parallel = 1;
  int sequence_parallel = 1;
  SpMode sp_mode = SpMode::megatron;

  // Ranks in the sequence-parallel dimension of the grid (1 for Megatron-SP).
  int sp_group_size() const { return own_sp_group() ? sequence_parallel : 1; }
  // Ulysses and ring attention have a sequence-parallel group of their own.
  bool own_sp_group() const { return sp_mode == SpMode::ulysses || sp_mode == SpMode::ring; }
};

// "dp2 x tp2 x sp1" (with " megatron-sp" when Megatron-SP is on): how checkpoints record a
// layout and how errors name one.
std::string layout_name(int dp, const LayoutSpec& s);

// Problems of a layout for `world` ranks, each naming the field and the numbers
// ("parallel.tensor_parallel: the world of 6 ranks is not a multiple of tensor_parallel (4)
// x sequence_parallel (1)"). Empty when it fits.
std::vector<std::string> layout_errors(int world, const LayoutSpec& s);

class ProcessGroups {
 public:
  // Collective over world (every rank calls it with the same spec). Throws lathe::Error with
  // layout_errors' messages when the layout does not fit the world.
  ProcessGroups(std::shared_ptr<Communicator> world, const LayoutSpec& spec);

  const std::shared_ptr<Communicator>& world() const { return world_; }
  const std::shared_ptr<Communicator>& tp() const { return tp_; }
  const std::shared_ptr<Communicator>& sp() const { return sp_; }
  const std::shared_ptr<Communicator>& dp() const { return dp_; }
  const LayoutSpec& spec() const { return spec_; }

  int tp_size() const { return spec_.tensor_parallel; }
  int sp_size() const { return spec_.sp_group_size(); }
  int dp_size() const { return dp_size_; }
  int tp_rank() const { return tp_rank_; }
  int sp_rank() const { return sp_rank_; }
  int dp_rank() const { return dp_rank_; }
  SpMode sp_mode() const { return spec_.sp_mode; }
  bool megatron_sp() const { return spec_.sp_mode == SpMode::megatron && spec_.sequence_parallel > 1; }
  std::string name() const { return layout_name(dp_size_, spec_); }

  // The coordinates of world rank r, and back.
  struct Coord {
    int dp, sp, tp;
  };
  static Coord coord_of(int rank, int tp, int sp);
  static int rank_of(const Coord& c, int tp, int sp);

 private:
  std::shared_ptr<Communicator> world_, tp_, sp_, dp_;
  LayoutSpec spec_;
  int dp_size_ = 1, tp_rank_ = 0, sp_rank_ = 0, dp_rank_ = 0;
};

}  // namespace lathe::parallel
