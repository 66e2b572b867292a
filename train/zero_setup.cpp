// ZeRO-1 glue of the trainer; see zero_setup.h.
#include "train/zero_setup.h"

#include <map>

#include "optim/registry.h"
#include "train/checkpoint_dir.h"
#include "train/hdf5_io.h"

namespace lathe::train {

namespace {
// A root attribute (not a dataset: every dataset of a rank file is a tensor but the config).
// Beside the process-group layout ("parallel_layout", train/parallel_layout.h).
constexpr const char* kLayoutKey = "optimizer_layout";
constexpr const char* kPlainDp = "plain data parallelism (every rank holds the whole optimizer state)";

std::string refusal(const std::string& where, const std::string& saved, const std::string& now) {
  return where + " holds optimizer state of the layout \"" + saved + "\", but this run's layout is \"" + now +
         "\": resharding ZeRO optimizer state is not implemented; resume with the checkpoint's layout (the same "
         "parallel.zero_stage and mpirun -np) or start fresh with checkpoint.resume: \"never\"";
}
}  // namespace

parallel::ZeroPartition zero_partition_for(const lathe::OptimizerConfig& cfg) {
  switch (cfg.type()) {
    case lathe::OptimizerConfig::ADAMW:
      // 8-bit states quantise whole blocks and choose 8-bit by tensor size: whole tensors.
      return cfg.state_bits() == 8 ? parallel::ZeroPartition::per_parameter : parallel::ZeroPartition::flat;
    case lathe::OptimizerConfig::SGD:
      return parallel::ZeroPartition::flat;
    default:
      // SGD-SaI (one g-SNR per tensor), GaLore and Fira (projections of whole 2-D gradients),
      // and any later optimizer until it says otherwise.
      return parallel::ZeroPartition::per_parameter;
  }
}

std::unique_ptr<parallel::ZeroSharder> make_zero_sharder(const lathe::OptimizerConfig& cfg, const optim::Optimizer& full,
                                                         std::shared_ptr<parallel::Communicator> comm,
                                                         const std::vector<std::pair<std::string, Tensor>>& shard_params) {
  const parallel::ZeroPartition partition = zero_partition_for(cfg);
  const std::map<std::string, Tensor> instead(shard_params.begin(), shard_params.end());
  std::vector<std::pair<std::string, Tensor>> params;
  std::vector<int64_t> costs;
  for (const auto& g : full.groups())
    for (const auto& [name, p] : g.params) {
      if (!instead.empty()) {
        auto it = instead.find(name);
        LATHE_CHECK(it != instead.end()) << "ZeRO: no tensor to shard for parameter " << name;
        params.emplace_back(name, it->second);
      } else {
        params.emplace_back(name, p);
      }
      if (partition != parallel::ZeroPartition::per_parameter) continue;
      int64_t bytes = 0;
      for (const auto& [key, t] : full.init_state(name, p, g)) bytes += static_cast<int64_t>(t.nbytes());
      costs.push_back(bytes);
    }
  return std::make_unique<parallel::ZeroSharder>(std::move(params), std::move(comm), partition, costs);
}

std::unique_ptr<optim::Optimizer> make_shard_optimizer(const lathe::OptimizerConfig& cfg, const optim::Optimizer& full,
                                                      const parallel::ZeroSharder& sharder) {
  return make_shard_optimizer(cfg, full, sharder.pieces());
}

std::unique_ptr<optim::Optimizer> make_shard_optimizer(const lathe::OptimizerConfig& cfg, const optim::Optimizer& full,
                                                      const std::vector<std::pair<std::string, Tensor>>& pieces) {
  std::map<std::string, size_t> group_of;
  for (size_t g = 0; g < full.groups().size(); ++g)
    for (const auto& np : full.groups()[g].params) group_of[np.first] = g;
  std::vector<optim::ParamGroup> groups;
  for (const auto& g : full.groups()) {
    optim::ParamGroup s = g;
    s.params.clear();
    s.options["zero_shard"] = true;  // GaLore: this rank may own no projected matrix
    groups.push_back(std::move(s));
  }
  for (const auto& [name, piece] : pieces) {
    auto it = group_of.find(name);
    LATHE_CHECK(it != group_of.end()) << "ZeRO: piece " << name << " belongs to no optimizer group";
    groups[it->second].params.emplace_back(name, piece);
  }
  std::vector<optim::ParamGroup> kept;
  for (auto& g : groups)
    if (!g.params.empty()) kept.push_back(std::move(g));
  std::unique_ptr<optim::Optimizer> opt = optim::make_optimizer_for_groups(cfg, std::move(kept));
  opt->set_paging(full.paging());
  return opt;
}

std::string layout_description(const parallel::ZeroSharder* sharder, int sequence_parallel) {
  std::string d = sharder ? sharder->layout().describe() : kPlainDp;
  // Older checkpoints (and sp 1) carry the data-parallel part alone.
  if (sequence_parallel > 1) d += "; Ulysses sequence parallelism over " + std::to_string(sequence_parallel) + " ranks";
  return d;
}

std::shared_ptr<CheckpointPart> layout_part(std::string description) {
  return std::make_shared<FunctionPart>(
      "parallel layout", [description](H5Writer& w) { w.set_attr("/", kLayoutKey, description); },
      [description](const H5Reader& r) {
        // Checkpoints from before this record are plain data parallelism.
        const std::string saved = r.has_attr("/", kLayoutKey) ? r.attr_string("/", kLayoutKey) : kPlainDp;
        if (saved != description) throw CheckpointError(refusal(r.path(), saved, description));
      });
}

void check_resume_layout(const std::string& step_dir, const std::string& description, int world) {
  const std::string file = rank_file(step_dir, 0);
  std::string saved = kPlainDp;
  int64_t saved_world = world;
  try {
    H5Reader r(file);
    if (r.has_attr("/", kLayoutKey)) saved = r.attr_string("/", kLayoutKey);
    if (r.has_attr("/", "world_size")) saved_world = r.attr_int("/", "world_size");
  } catch (const lathe::Error&) {
    return;  // load_checkpoint reports an unreadable file with its own message
  }
  if (saved_world == world) return;
  if (saved == description && saved == kPlainDp) return;  // load_checkpoint's rank-count message
  throw CheckpointError(refusal(step_dir + " (written by " + std::to_string(saved_world) + " rank(s), this run has " +
                                    std::to_string(world) + ")",
                                saved, description));
}

}  // namespace lathe::train
