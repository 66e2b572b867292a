// Full training-state checkpoints in HDF5; see checkpoint.h for the layout.
#include "train/checkpoint.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "train/checkpoint_dir.h"
#include "train/hdf5_io.h"

namespace fs = std::filesystem;

namespace lathe::train {
namespace {

int64_t u64_bits(uint64_t v) {
  int64_t r;
  std::memcpy(&r, &v, sizeof r);
  return r;
}
uint64_t bits_u64(int64_t v) {
  uint64_t r;
  std::memcpy(&r, &v, sizeof r);
  return r;
}

// Runs fn, turning any lathe::Error (HDF5, filesystem) into a CheckpointError with context.
template <typename F>
auto as_checkpoint_error(const std::string& context, F&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const CheckpointError&) {
    throw;
  } catch (const lathe::Error& e) {
    throw CheckpointError(context + ": " + e.message());
  } catch (const nlohmann::json::exception& e) {  // a damaged COMPLETE index
    throw CheckpointError(context + ": " + e.what());
  }
}

// The "world_size" of a step directory's COMPLETE index, validated: a marker damaged or
// written by hand must be a checkpoint error naming the file, not a JSON exception.
int64_t index_world_size(const std::string& dir) {
  const nlohmann::json index = read_complete(dir);
  const std::string marker = (fs::path(dir) / "COMPLETE").string();
  if (!index.is_object())
    throw CheckpointError(marker + ": the index is not a JSON object; the checkpoint marker is damaged");
  if (!index.contains("world_size"))
    throw CheckpointError(marker + ": the index has no \"world_size\" field; the checkpoint marker is damaged "
                          "(rewrite it, or resume from another step)");
  const nlohmann::json& ws = index["world_size"];
  if (!ws.is_number_integer() || ws.get<int64_t>() < 1)
    throw CheckpointError(marker + ": \"world_size\" must be an integer >= 1, found " + ws.dump());
  return ws.get<int64_t>();
}

// The layout recorded in a step directory's COMPLETE index; a checkpoint from before layouts
// were recorded is plain data parallelism over its world.
std::string index_layout(const std::string& dir, int64_t world) {
  const nlohmann::json index = read_complete(dir);
  if (index.is_object() && index.contains("layout") && index["layout"].is_string())
    return index["layout"].get<std::string>();
  return "dp" + std::to_string(world) + " x tp1 x sp1";
}

// The file's format attributes; CheckpointError when it is not a checkpoint of this version.
void check_format(const H5Reader& r) {
  const std::string& path = r.path();
  if (!r.has_attr("/", "format") || r.attr_string("/", "format") != "lathe-checkpoint")
    throw CheckpointError(path + " is not a lathe checkpoint (no format=\"lathe-checkpoint\" attribute)");
  const int64_t version = r.attr_int("/", "format_version");
  if (version != kCheckpointFormatVersion)
    throw CheckpointError(path + " has checkpoint format version " + std::to_string(version) +
                          "; this build reads version " + std::to_string(kCheckpointFormatVersion));
}

CheckpointMeta read_meta(const H5Reader& r) {
  CheckpointMeta m;
  m.step = read_i64(r, "state/step");
  m.tokens_seen = read_i64(r, "state/tokens_seen");
  m.rank = static_cast<int>(r.attr_int("/", "rank"));
  m.world_size = static_cast<int>(r.attr_int("/", "world_size"));
  m.config_text = r.read_string("config");
  return m;
}

// The scalars of a TrainState (state/...), as one part: the fixed layout of the legacy
// (model, optimizer, TrainState) functions below.
class TrainStatePart : public CheckpointPart {
 public:
  explicit TrainStatePart(TrainState* st) : st_(st) {}
  std::string name() const override { return "train state"; }
  void save(H5Writer& w) const override {
    write_i64(w, "state/step", st_->step);
    write_i64(w, "state/tokens_seen", st_->tokens_seen);
    write_i64(w, "state/loader_epoch", st_->loader.epoch);
    write_i64(w, "state/loader_index", st_->loader.index);
    write_i64(w, "state/rng_dropout_seed", u64_bits(st_->dropout_seed));
    write_i64(w, "state/rng_dropout_offset", u64_bits(st_->dropout_offset));
    w.write_tensor("state/lr", Tensor::scalar(st_->lr, DType::f64));
  }
  void load(const H5Reader& r) override {
    st_->step = read_i64(r, "state/step");
    st_->tokens_seen = read_i64(r, "state/tokens_seen");
    st_->loader.epoch = read_i64(r, "state/loader_epoch");
    st_->loader.index = read_i64(r, "state/loader_index");
    st_->dropout_seed = bits_u64(read_i64(r, "state/rng_dropout_seed"));
    st_->dropout_offset = bits_u64(read_i64(r, "state/rng_dropout_offset"));
    st_->lr = r.read_tensor("state/lr", DType::f64, Shape{}).item();
  }

 private:
  TrainState* st_;
};

CheckpointMeta meta_of(const TrainState& st) {
  CheckpointMeta m;
  m.step = st.step;
  m.tokens_seen = st.tokens_seen;
  m.world_size = st.world_size;
  m.rank = st.rank;
  m.config_text = st.config_text;
  return m;
}

}  // namespace

void write_i64(H5Writer& w, const std::string& name, int64_t v) {
  Tensor t = Tensor::empty({}, DType::i64);
  *t.data<int64_t>() = v;
  w.write_tensor(name, t);
}

int64_t read_i64(const H5Reader& r, const std::string& name) {
  Tensor t = r.read_tensor(name, DType::i64, Shape{});
  return *t.data<int64_t>();
}

// ---- parts --------------------------------------------------------------------------------

void ModelPart::save(H5Writer& w) const {
  for (const auto& [name, p] : model_->named_parameters())
    if (!trainable_only_ || p.requires_grad()) w.write_tensor("model/" + name, p);
}

void ModelPart::load(const H5Reader& r) {
  const std::string& path = r.path();
  std::set<std::string> stored;
  for (const auto& n : r.list_datasets("model")) stored.insert(n);
  for (const auto& [name, p] : model_->named_parameters()) {
    if (trainable_only_ && !p.requires_grad()) continue;
    if (!stored.count(name))
      throw CheckpointError(path + " has no tensor model/" + name +
                            ": the checkpoint was written for a different model (check the model section of the "
                            "config)");
    const Shape shape = r.shape("model/" + name);
    if (shape != p.shape())
      throw CheckpointError("parameter " + name + ": the checkpoint " + path + " holds shape " + shape_str(shape) +
                            " but the model has " + p.shape_str() +
                            " (a different model config; to start over use checkpoint.resume: \"never\" or "
                            "another run_dir)");
    const DType dt = r.dtype("model/" + name);
    if (dt != p.dtype())
      throw CheckpointError(std::string("parameter ") + name + ": the checkpoint holds " + dtype_name(dt) +
                            " but the model has " + dtype_name(p.dtype()));
    r.read_into("model/" + name, p);  // any device: read_into copies host -> device
    stored.erase(name);
  }
  if (!stored.empty())
    throw CheckpointError(path + " holds model/" + *stored.begin() + " (and " + std::to_string(stored.size() - 1) +
                          " more) that the model does not have: the checkpoint was written for a different model");
}

void OptimizerPart::save(H5Writer& w) const {
  for (const auto& [key, t] : opt_->state_dict()) w.write_tensor("optim/" + key, t);
  w.set_attr("/", "optimizer", opt_->name());
}

void OptimizerPart::load(const H5Reader& r) {
  std::map<std::string, Tensor> sd;
  for (const auto& n : r.list_datasets("optim")) {
    Tensor t = r.read_tensor("optim/" + n);
    // State lives beside its parameter: read on the host, then moved to the run's device.
    sd[n] = device_.is_cpu() ? t : t.to(device_);
  }
  if (sd.empty()) throw CheckpointError(r.path() + " holds no optimizer state (a weights-only file)");
  opt_->load_state_dict(sd);
}

// ---- rank files and step directories of parts ---------------------------------------------

static void write_rank_checkpoint_to(const std::string& path, const std::string& tmp, const CheckpointParts& parts,
                                     const CheckpointMeta& meta) {
  as_checkpoint_error("writing " + path, [&] {
    {
      H5Writer w(tmp);
      // Before the parts: a part may replace it (the optimizer writes its name).
      w.set_attr("/", "optimizer", "none");
      for (const CheckpointPart* part : parts)
        as_checkpoint_error("writing " + path + " (" + part->name() + ")", [&] { part->save(w); });
      w.write_string("config", meta.config_text);
      w.set_attr("/", "format", "lathe-checkpoint");
      w.set_attr("/", "format_version", kCheckpointFormatVersion);
      w.set_attr("/", "rank", static_cast<int64_t>(meta.rank));
      w.set_attr("/", "world_size", static_cast<int64_t>(meta.world_size));
      if (!meta.layout.empty()) w.set_attr("/", "parallel_layout", meta.layout);
      w.set_attr("/", "step", meta.step);
      w.set_attr("/", "config", meta.config_text);
      w.close();
    }
    commit_file(tmp, path);
  });
}

void write_rank_checkpoint(const std::string& path, const CheckpointParts& parts, const CheckpointMeta& meta) {
  const std::string tmp = tmp_path(path);
  try {
    write_rank_checkpoint_to(path, tmp, parts, meta);
  } catch (...) {
    // Whatever failed (a full disk, a part), the temporary file is useless: remove it.
    ::unlink(tmp.c_str());
    throw;
  }
}

CheckpointMeta read_rank_checkpoint(const std::string& path, const CheckpointParts& parts) {
  return as_checkpoint_error("loading " + path, [&] {
    H5Reader r(path);
    check_format(r);
    CheckpointMeta meta = read_meta(r);
    for (CheckpointPart* part : parts)
      as_checkpoint_error("loading " + path + " (" + part->name() + ")", [&] { part->load(r); });
    return meta;
  });
}

std::string save_checkpoint(const std::string& ckpt_root, const CheckpointParts& parts, const CheckpointMeta& meta,
                            parallel::Communicator& comm, int keep_last_k) {
  const std::string dir = step_dir(ckpt_root, meta.step);
  // A failure on one rank must not leave the others waiting in a barrier forever: every
  // rank reports success or failure, and all of them throw together.
  auto agree = [&](bool ok_here, const std::string& what) {
    Tensor flag = Tensor::scalar(ok_here ? 0.0 : 1.0, DType::f32);
    if (comm.size() > 1) comm.all_reduce(flag, parallel::ReduceOp::max);
    if (flag.item() != 0.0 && ok_here)
      throw CheckpointError("saving " + dir + ": another rank failed while " + what);
  };
  std::string err;
  if (comm.rank() == 0) {
    try {
      as_checkpoint_error("preparing " + dir, [&] { prepare_step_dir(ckpt_root, meta.step); });
    } catch (const CheckpointError& e) {
      err = e.message();
    }
  }
  agree(err.empty(), "preparing the step directory");
  if (!err.empty()) throw CheckpointError(err);

  try {
    write_rank_checkpoint(rank_file(dir, comm.rank()), parts, meta);
  } catch (const CheckpointError& e) {
    err = e.message();
  }
  agree(err.empty(), "writing its rank file");
  if (!err.empty()) throw CheckpointError(err);

  if (comm.rank() == 0) {
    try {
      as_checkpoint_error("completing " + dir, [&] {
        nlohmann::json index = {{"step", meta.step}, {"world_size", comm.size()}, {"tokens_seen", meta.tokens_seen}};
        if (!meta.layout.empty()) index["layout"] = meta.layout;
        mark_complete(dir, index);
        if (keep_last_k > 0) keep_last(ckpt_root, keep_last_k);
      });
    } catch (const CheckpointError& e) {
      err = e.message();
    }
  }
  agree(err.empty(), "marking the step complete");
  if (!err.empty()) throw CheckpointError(err);
  return dir;
}

CheckpointMeta load_checkpoint(const std::string& dir, const CheckpointParts& parts, parallel::Communicator& comm,
                               const std::string& layout) {
  const int64_t saved_world = as_checkpoint_error("reading " + dir, [&] { return index_world_size(dir); });
  // Another number of ranks is said as such (below); the layouts are named there too.
  if (!layout.empty() && saved_world == comm.size()) {
    const std::string saved = as_checkpoint_error("reading " + dir, [&] { return index_layout(dir, saved_world); });
    if (saved != layout)
      throw CheckpointError(dir + " was written with the parallel layout " + saved + " (" +
                            std::to_string(saved_world) + " ranks), this run has " + layout + " (" +
                            std::to_string(comm.size()) +
                            " ranks): its tensors are sharded for its layout and resharding is not supported; resume "
                            "with the same parallel.tensor_parallel, parallel.sequence_parallel and mpirun -np, or "
                            "start fresh with checkpoint.resume: \"never\"");
  }
  if (saved_world != comm.size())
    throw CheckpointError(dir + " was written by " + std::to_string(saved_world) + " rank(s), this run has " +
                          std::to_string(comm.size()) + ": resume with the same number of ranks (mpirun -np " +
                          std::to_string(saved_world) + ") or start fresh with checkpoint.resume: \"never\"" +
                          (layout.empty() ? std::string()
                                          : " (parallel layouts: the checkpoint's " +
                                                as_checkpoint_error("reading " + dir,
                                                                    [&] { return index_layout(dir, saved_world); }) +
                                                ", this run's " + layout + ")"));
  const std::string file = rank_file(dir, comm.rank());
  const CheckpointMeta header = as_checkpoint_error("reading " + file, [&] {
    H5Reader r(file);
    check_format(r);
    return read_meta(r);
  });
  if (header.rank != comm.rank() || header.world_size != comm.size())
    throw CheckpointError(file + " says rank " + std::to_string(header.rank) + " of " +
                          std::to_string(header.world_size) + ", expected rank " + std::to_string(comm.rank()) +
                          " of " + std::to_string(comm.size()));
  return read_rank_checkpoint(file, parts);
}

// ---- the fixed (model, optimizer, TrainState) layout --------------------------------------

void write_rank_checkpoint(const std::string& path, const autograd::Module& model, const optim::Optimizer* opt,
                           const TrainState& st) {
  // The parts only read their objects while saving.
  ModelPart m(const_cast<autograd::Module&>(model));
  std::unique_ptr<OptimizerPart> o;
  if (opt) o = std::make_unique<OptimizerPart>(const_cast<optim::Optimizer&>(*opt));
  TrainState copy = st;
  TrainStatePart s(&copy);
  CheckpointParts parts = {&m};
  if (o) parts.push_back(o.get());
  parts.push_back(&s);
  write_rank_checkpoint(path, parts, meta_of(st));
}

TrainState read_train_state(const std::string& path) {
  return as_checkpoint_error("reading " + path, [&] {
    H5Reader r(path);
    check_format(r);
    TrainState st;
    TrainStatePart(&st).load(r);
    const CheckpointMeta m = read_meta(r);
    st.rank = m.rank;
    st.world_size = m.world_size;
    st.config_text = m.config_text;
    return st;
  });
}

namespace {
CheckpointParts legacy_parts(autograd::Module& model, optim::Optimizer* opt, std::unique_ptr<ModelPart>& m,
                             std::unique_ptr<OptimizerPart>& o) {
  m = std::make_unique<ModelPart>(model);
  CheckpointParts parts = {m.get()};
  if (opt) {
    o = std::make_unique<OptimizerPart>(*opt, model.device());
    parts.push_back(o.get());
  }
  return parts;
}
}  // namespace

TrainState read_rank_checkpoint(const std::string& path, autograd::Module& model, optim::Optimizer* opt) {
  TrainState st = read_train_state(path);
  std::unique_ptr<ModelPart> m;
  std::unique_ptr<OptimizerPart> o;
  read_rank_checkpoint(path, legacy_parts(model, opt, m, o));
  return st;
}

std::string save_checkpoint(const std::string& ckpt_root, const autograd::Module& model, const optim::Optimizer& opt,
                            const TrainState& st, parallel::Communicator& comm, int keep_last_k) {
  ModelPart m(const_cast<autograd::Module&>(model));
  OptimizerPart o(const_cast<optim::Optimizer&>(opt));
  TrainState copy = st;
  TrainStatePart s(&copy);
  return save_checkpoint(ckpt_root, {&m, &o, &s}, meta_of(st), comm, keep_last_k);
}

TrainState load_checkpoint(const std::string& dir, autograd::Module& model, optim::Optimizer* opt,
                           parallel::Communicator& comm) {
  std::unique_ptr<ModelPart> m;
  std::unique_ptr<OptimizerPart> o;
  CheckpointParts parts = legacy_parts(model, opt, m, o);
  TrainState st;
  TrainStatePart s(&st);
  parts.push_back(&s);
  const CheckpointMeta meta = load_checkpoint(dir, parts, comm);
  st.rank = meta.rank;
  st.world_size = meta.world_size;
  st.config_text = meta.config_text;
  return st;
}

std::string find_checkpoint_file(const std::string& path, const std::string& ckpt_root) {
  return as_checkpoint_error("finding a checkpoint in " + path, [&] {
    std::error_code ec;
    // runs/<name>/checkpoints/latest is a pointer file naming a step directory.
    if (path != "latest" && follow_latest(path)) return rank_file(resolve_resume(path), 0);
    if (path != "latest" && fs::is_regular_file(path, ec)) return path;
    if (path != "latest" && fs::is_directory(fs::path(path) / "checkpoints", ec))
      return rank_file(resolve_resume(path + "/checkpoints"), 0);
    return rank_file(resolve_resume(path, ckpt_root), 0);
  });
}

CheckpointInfo inspect_checkpoint(const std::string& path, bool verify) {
  CheckpointInfo info;
  info.file = find_checkpoint_file(path);
  info.step_dir = fs::path(info.file).parent_path().string();
  info.complete = is_complete(info.step_dir);
  info.state = read_train_state(info.file);
  as_checkpoint_error("reading " + info.file, [&] {
    H5Reader r(info.file);
    for (const auto& name : r.list_datasets("/")) {
      if (name == "config") continue;  // the string dataset; shown as the config summary
      TensorEntry e;
      e.name = name;
      e.shape = r.shape(name);
      e.dtype = r.dtype(name);
      e.bytes = shape_numel(e.shape) * static_cast<int64_t>(dtype_size(e.dtype));
      info.tensors.push_back(e);
      if (verify) {
        r.read_tensor(name);  // checks the checksum
        if (r.has_checksum(name)) ++info.checksummed;
      }
    }
    if (verify) r.read_string("config");
    info.verified = verify;
  });
  return info;
}

}  // namespace lathe::train
