// Full training-state checkpoints in HDF5; see checkpoint.h for the layout.
#include "train/checkpoint.h"

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

Tensor i64_scalar(int64_t v) {
  Tensor t = Tensor::empty({}, DType::i64);
  *t.data<int64_t>() = v;  // exact (a double round trip would lose bits above 2^53)
  return t;
}
int64_t read_i64(const H5Reader& r, const std::string& name) {
  Tensor t = r.read_tensor(name, DType::i64, Shape{});
  return *t.data<int64_t>();
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
  }
}

}  // namespace

void write_rank_checkpoint(const std::string& path, const autograd::Module& model, const optim::Optimizer* opt,
                           const TrainState& st) {
  as_checkpoint_error("writing " + path, [&] {
    const std::string tmp = tmp_path(path);
    {
      H5Writer w(tmp);
      for (const auto& [name, p] : model.named_parameters()) w.write_tensor("model/" + name, p);
      if (opt) {
        for (const auto& [key, t] : opt->state_dict()) w.write_tensor("optim/" + key, t);
      }
      w.write_tensor("state/step", i64_scalar(st.step));
      w.write_tensor("state/tokens_seen", i64_scalar(st.tokens_seen));
      w.write_tensor("state/loader_epoch", i64_scalar(st.loader.epoch));
      w.write_tensor("state/loader_index", i64_scalar(st.loader.index));
      w.write_tensor("state/rng_dropout_seed", i64_scalar(u64_bits(st.dropout_seed)));
      w.write_tensor("state/rng_dropout_offset", i64_scalar(u64_bits(st.dropout_offset)));
      w.write_tensor("state/lr", Tensor::scalar(st.lr, DType::f64));
      w.write_string("config", st.config_text);
      w.set_attr("/", "format", "lathe-checkpoint");
      w.set_attr("/", "format_version", kCheckpointFormatVersion);
      w.set_attr("/", "rank", static_cast<int64_t>(st.rank));
      w.set_attr("/", "world_size", static_cast<int64_t>(st.world_size));
      w.set_attr("/", "step", st.step);
      w.set_attr("/", "optimizer", opt ? opt->name() : "none");
      w.set_attr("/", "config", st.config_text);
      w.close();
    }
    commit_file(tmp, path);
  });
}

TrainState read_train_state(const std::string& path) {
  return as_checkpoint_error("reading " + path, [&] {
    H5Reader r(path);
    if (!r.has_attr("/", "format") || r.attr_string("/", "format") != "lathe-checkpoint")
      throw CheckpointError(path + " is not a lathe checkpoint (no format=\"lathe-checkpoint\" attribute)");
    const int64_t version = r.attr_int("/", "format_version");
    if (version != kCheckpointFormatVersion)
      throw CheckpointError(path + " has checkpoint format version " + std::to_string(version) +
                            "; this build reads version " + std::to_string(kCheckpointFormatVersion));
    TrainState st;
    st.step = read_i64(r, "state/step");
    st.tokens_seen = read_i64(r, "state/tokens_seen");
    st.loader.epoch = read_i64(r, "state/loader_epoch");
    st.loader.index = read_i64(r, "state/loader_index");
    st.dropout_seed = bits_u64(read_i64(r, "state/rng_dropout_seed"));
    st.dropout_offset = bits_u64(read_i64(r, "state/rng_dropout_offset"));
    st.lr = r.read_tensor("state/lr", DType::f64, Shape{}).item();
    st.rank = static_cast<int>(r.attr_int("/", "rank"));
    st.world_size = static_cast<int>(r.attr_int("/", "world_size"));
    st.config_text = r.read_string("config");
    return st;
  });
}

TrainState read_rank_checkpoint(const std::string& path, autograd::Module& model, optim::Optimizer* opt) {
  TrainState st = read_train_state(path);
  as_checkpoint_error("loading " + path, [&] {
    H5Reader r(path);
    std::set<std::string> stored;
    for (const auto& n : r.list_datasets("model")) stored.insert(n);
    for (const auto& [name, p] : model.named_parameters()) {
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
      r.read_into("model/" + name, p);
      stored.erase(name);
    }
    if (!stored.empty())
      throw CheckpointError(path + " holds model/" + *stored.begin() + " (and " + std::to_string(stored.size() - 1) +
                            " more) that the model does not have: the checkpoint was written for a different model");
    if (opt) {
      std::map<std::string, Tensor> sd;
      for (const auto& n : r.list_datasets("optim")) sd[n] = r.read_tensor("optim/" + n);
      if (sd.empty()) throw CheckpointError(path + " holds no optimizer state (a weights-only file)");
      opt->load_state_dict(sd);
    }
  });
  return st;
}

std::string save_checkpoint(const std::string& ckpt_root, const autograd::Module& model, const optim::Optimizer& opt,
                            const TrainState& st, parallel::Communicator& comm, int keep_last_k) {
  const std::string dir = step_dir(ckpt_root, st.step);
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
      as_checkpoint_error("preparing " + dir, [&] { prepare_step_dir(ckpt_root, st.step); });
    } catch (const CheckpointError& e) {
      err = e.what();
    }
  }
  agree(err.empty(), "preparing the step directory");
  if (!err.empty()) throw CheckpointError(err);

  try {
    write_rank_checkpoint(rank_file(dir, comm.rank()), model, &opt, st);
  } catch (const CheckpointError& e) {
    err = e.what();
  }
  agree(err.empty(), "writing its rank file");
  if (!err.empty()) throw CheckpointError(err);

  if (comm.rank() == 0) {
    try {
      as_checkpoint_error("completing " + dir, [&] {
        mark_complete(dir, {{"step", st.step}, {"world_size", comm.size()}, {"tokens_seen", st.tokens_seen}});
        if (keep_last_k > 0) keep_last(ckpt_root, keep_last_k);
      });
    } catch (const CheckpointError& e) {
      err = e.what();
    }
  }
  agree(err.empty(), "marking the step complete");
  if (!err.empty()) throw CheckpointError(err);
  return dir;
}

TrainState load_checkpoint(const std::string& dir, autograd::Module& model, optim::Optimizer* opt,
                           parallel::Communicator& comm) {
  const int64_t saved_world = as_checkpoint_error("reading " + dir, [&] {
    nlohmann::json index = read_complete(dir);
    return index.at("world_size").get<int64_t>();
  });
  if (saved_world != comm.size())
    throw CheckpointError(dir + " was written by " + std::to_string(saved_world) + " rank(s), this run has " +
                          std::to_string(comm.size()) + ": resume with the same number of ranks (mpirun -np " +
                          std::to_string(saved_world) + ") or start fresh with checkpoint.resume: \"never\"");
  TrainState st = read_rank_checkpoint(rank_file(dir, comm.rank()), model, opt);
  if (st.rank != comm.rank() || st.world_size != comm.size())
    throw CheckpointError(rank_file(dir, comm.rank()) + " says rank " + std::to_string(st.rank) + " of " +
                          std::to_string(st.world_size) + ", expected rank " + std::to_string(comm.rank()) + " of " +
                          std::to_string(comm.size()));
  return st;
}

std::string find_checkpoint_file(const std::string& path, const std::string& ckpt_root) {
  return as_checkpoint_error("finding a checkpoint in " + path, [&] {
    std::error_code ec;
    if (path != "latest" && fs::is_regular_file(path, ec)) return path;
    if (path != "latest" && fs::is_directory(fs::path(path) / "checkpoints", ec))
      return rank_file(resolve_resume(path + "/checkpoints"), 0);
    return rank_file(resolve_resume(path, ckpt_root), 0);
  });
}

CheckpointInfo inspect_checkpoint(const std::string& path) {
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
    }
  });
  return info;
}

}  // namespace lathe::train
