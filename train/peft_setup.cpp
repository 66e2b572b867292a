#include "train/peft_setup.h"

#include <algorithm>
#include <filesystem>
#include <optional>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "models/autocast.h"
#include "peft/lora_sb.h"
#include "peft/sora.h"
#include "train/batches.h"
#include "train/hdf5_io.h"

namespace lathe::train {

namespace {

template <typename Map, typename V>
std::vector<std::pair<std::string, V>> ordered(const Map& m) {
  std::vector<std::pair<std::string, V>> out;
  for (const auto& [k, v] : m) out.emplace_back(k, static_cast<V>(v));
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.first.size() != b.first.size() ? a.first.size() > b.first.size() : a.first < b.first;
  });
  return out;
}

}  // namespace

bool peft_enabled(const RunConfig& cfg) { return cfg.peft().method() != PeftConfig::OFF; }

peft::PeftOptions peft_options(const RunConfig& cfg) {
  const PeftConfig& c = cfg.peft();
  peft::PeftOptions o;
  o.target.names.assign(c.target_modules().begin(), c.target_modules().end());
  o.target.regex = c.target_regex();
  o.exclude.names.assign(c.exclude_modules().begin(), c.exclude_modules().end());
  o.exclude.regex = c.exclude_regex();
  o.rank_pattern = ordered<decltype(c.rank_pattern()), int64_t>(c.rank_pattern());
  o.alpha_pattern = ordered<decltype(c.alpha_pattern()), double>(c.alpha_pattern());
  o.modules_to_save.assign(c.modules_to_save().begin(), c.modules_to_save().end());
  switch (c.bias()) {
    case PeftConfig::NONE: o.bias = peft::BiasMode::none; break;
    case PeftConfig::ALL: o.bias = peft::BiasMode::all; break;
    case PeftConfig::LORA_ONLY: o.bias = peft::BiasMode::lora_only; break;
  }
  o.lora.r = c.r();
  o.lora.alpha = c.lora_alpha();
  o.lora.dropout = c.lora_dropout();
  o.lora.use_rslora = c.use_rslora();
  o.lora.init = c.init() == PeftConfig::GAUSSIAN ? peft::LoraInit::gaussian : peft::LoraInit::kaiming;
  o.seed = c.seed() != 0 ? c.seed() : cfg.train().seed();
  switch (c.method()) {
    case PeftConfig::LORA: o.method = peft::Method::lora; break;
    case PeftConfig::LORA_SB: o.method = peft::Method::lora_sb; break;
    case PeftConfig::SORA: o.method = peft::Method::sora; break;
    case PeftConfig::NOLA: o.method = peft::Method::nola; break;
    case PeftConfig::SPIEL: o.method = peft::Method::spiel; break;
    case PeftConfig::OFF: break;  // not injected
  }
  o.spiel.regrow = c.spiel_regrow() == PeftConfig::MA ? peft::SpielRegrow::ma : peft::SpielRegrow::ag;
  o.spiel.density = c.spiel_density();
  o.spiel.budget = c.spiel_budget();
  o.spiel.schedule.reselection_steps = c.spiel_reselection_steps();
  o.spiel.schedule.accumulation_steps = c.spiel_accumulation_steps();
  o.spiel.schedule.rate = c.spiel_reselection_rate();
  o.spiel.schedule.cosine = c.spiel_policy() == PeftConfig::COSINE;
  o.sb.gradient_init = c.sb_init() == PeftConfig::GRADIENT;
  o.sb.init_batches = c.sb_init_batches();
  o.sb.svd_niter = c.svd_niter();
  o.sora.threshold = c.sora_threshold() == PeftConfig::CODE ? peft::SoraThreshold::code : peft::SoraThreshold::paper;
  o.sora.lambda = c.sora_lambda();
  o.sora.lambda_max = c.sora_lambda_max();
  o.sora.schedule_start = c.sora_schedule_start();
  o.sora.schedule_levels = c.sora_schedule_levels();
  o.sora.schedule_interval = c.sora_schedule_interval();
  o.nola.num_basis_A = c.nola_num_basis_a();
  o.nola.num_basis_B = c.nola_num_basis_b();
  o.nola.chunk = c.nola_chunk();
  return o;
}

std::string adapter_dir(const RunConfig& cfg) {
  if (!cfg.peft().adapter_dir().empty()) return cfg.peft().adapter_dir();
  return (std::filesystem::path(cfg.run_dir()) / "adapter").string();
}

namespace {
// LoRA-SB's init of a tensor-parallel layer: G gathered whole, the factors of a whole-size
// stand-in computed from it (the one-process arithmetic), this rank's slices kept.
void init_sharded_from_gradient(models::CausalLM& model, const std::string& name, peft::LoraSbLinear& l,
                                const Tensor& grad_shard, double eta, const peft::LoraSbOptions& o,
                                const ParallelLayout& layout) {
  parallel::Communicator& tp = *layout.groups().tp();
  const models::ModelSpec& spec = model.spec();
  const Tensor g = parallel::all_gather_shards(name + ".weight", grad_shard, tp, spec);
  peft::LoraOptions lo;
  lo.r = l.rank();
  lo.alpha = l.alpha();
  lo.use_rslora = l.use_rslora();
  auto whole = std::make_shared<peft::LoraSbLinear>(std::make_shared<models::Linear>(g.size(1), g.size(0), false), lo,
                                                    nullptr);
  whole->init_from_gradient(g, eta, o);
  autograd::NoGradGuard no_grad;
  const int t = layout.tensor_parallel(), rank = layout.groups().tp_rank();
  auto put = [](const Tensor& dst, const Tensor& src) { dst.copy_(src.to(dst.dtype()).to(dst.device())); };
  put(l.lora_A(), parallel::slice_shard(name + ".lora_A.weight", whole->lora_A(), spec, t, rank, 1));
  put(l.lora_B(), parallel::slice_shard(name + ".lora_B.weight", whole->lora_B(), spec, t, rank, 1));
  put(l.lora_R(), whole->lora_R());
}
}  // namespace

int64_t init_adapters_from_gradients(models::CausalLM& model, const peft::PeftOptions& opts, TrainBatches& batches,
                                     int64_t num_batches, double eta, Device device, bool bf16,
                                     parallel::Communicator& comm, const ParallelLayout* layout) {
  std::vector<std::pair<std::string, peft::LoraSbLinear*>> layers;
  for (auto& [name, l] : peft::lora_layers(model))
    if (auto* sb = dynamic_cast<peft::LoraSbLinear*>(l)) layers.emplace_back(name, sb);
  if (layers.empty()) return 0;
  LATHE_REQUIRE(num_batches > 0) << "peft.sb_init_batches must be > 0 (got " << num_batches << ")";
  const bool was_training = model.is_training();
  model.train(false);
  // The base weights take gradients for these passes only. The adapters are still zero
  // (A = B = R = 0), so the model is the base model and G is its gradient.
  for (auto& [name, l] : layers) l->base_weight().set_requires_grad(true);
  for (int64_t i = 0; i < num_batches; ++i) {
    const data::LMBatch b = batches.next();
    Tensor loss;
    {
      std::optional<models::Autocast> autocast;
      if (bf16) autocast.emplace(DType::bf16);
      loss = model.loss(b.ids.to(device), b.targets.to(device));
    }
    loss.backward();
  }
  std::vector<Tensor> grads;
  for (auto& [name, l] : layers) {
    Tensor g = l->base_weight().grad();
    if (!g.defined()) g = Tensor::zeros(l->base_weight().shape(), DType::f32, l->base_weight().device());
    if (comm.size() > 1) comm.all_reduce(g, parallel::ReduceOp::sum);
    grads.push_back(g);
  }
  for (auto& [name, l] : layers) {
    l->base_weight().set_grad(Tensor());
    l->base_weight().set_requires_grad(false);
  }
  for (auto& [name, p] : model.named_parameters()) p.set_grad(Tensor());
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layout && layout->tensor_parallel() > 1)
      init_sharded_from_gradient(model, layers[i].first, *layers[i].second, grads[i], eta, opts.sb, *layout);
    else
      layers[i].second->init_from_gradient(grads[i], eta, opts.sb);
  }
  model.train(was_training);
  return static_cast<int64_t>(layers.size());
}

std::vector<std::pair<std::string, Tensor>> frozen_adapter_factors(models::CausalLM& model) {
  std::vector<std::pair<std::string, Tensor>> frozen;
  for (auto& [name, l] : peft::lora_layers(model)) {
    if (!dynamic_cast<peft::LoraSbLinear*>(l)) continue;
    frozen.emplace_back(name + ".lora_A.weight", l->lora_A());
    frozen.emplace_back(name + ".lora_B.weight", l->lora_B());
  }
  return frozen;
}

std::shared_ptr<CheckpointPart> frozen_adapter_part(models::CausalLM& model) {
  const std::vector<std::pair<std::string, Tensor>> frozen = frozen_adapter_factors(model);
  // SpIEL's indices (where the values sit; changed by every reselection).
  std::vector<std::pair<std::string, peft::SparseDeltaLinear*>> sparse = peft::spiel_layers(model);
  if (frozen.empty() && sparse.empty()) return nullptr;
  return std::make_shared<FunctionPart>(
      "frozen adapter factors",
      [frozen, sparse](H5Writer& w) {
        for (const auto& [n, t] : frozen) w.write_tensor("peft/" + n, t);
        for (const auto& [n, l] : sparse) w.write_tensor("peft/" + n + ".sft_indices", l->indices());
      },
      [frozen, sparse](const H5Reader& r) {
        for (const auto& [n, l] : sparse) {
          const std::string key = "peft/" + n + ".sft_indices";
          if (!r.exists(key))
            throw CheckpointError(r.path() + " has no tensor " + key + ": it was not written by a SPIEL run with these targets");
          if (r.shape(key) != Shape{l->budget()})
            throw CheckpointError(key + ": the checkpoint " + r.path() + " holds shape " + shape_str(r.shape(key)) +
                                  ", the SpIEL budget of " + n + " is " + std::to_string(l->budget()));
          try {
            l->set_indices(r.read_tensor(key, DType::i64), r.path() + " " + key);
          } catch (const lathe::Error& e) {
            throw CheckpointError(e.message());
          }
        }
        for (const auto& [n, t] : frozen) {
          if (!r.exists("peft/" + n))
            throw CheckpointError(r.path() + " has no tensor peft/" + n +
                                  ": it was not written by a LORA_SB run with these targets");
          if (r.shape("peft/" + n) != t.shape())
            throw CheckpointError("peft/" + n + ": the checkpoint " + r.path() + " holds shape " +
                                  shape_str(r.shape("peft/" + n)) + ", the adapter has " + t.shape_str());
          r.read_into("peft/" + n, t);
        }
      });
}

void after_optimizer_step(models::CausalLM& model, const peft::PeftOptions& opts, double lr, int64_t step) {
  if (opts.method == peft::Method::sora) peft::sora_after_step(model, lr, step);
}

}  // namespace lathe::train
