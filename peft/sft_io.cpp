#include "peft/sft_io.h"

#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "core/fs.h"
#include "models/safetensors.h"
#include "peft/targets.h"

namespace lathe::peft {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

const char* const kPrefix = "base_model.model.";
const char* const kWeights = "adapter_model.safetensors";
const char* const kConfig = "adapter_config.json";

// Where lathe's modules sit inside one Hugging Face weight.
struct Block {
  std::string name;
  int64_t row0, out, in;
};
struct HfWeight {
  const HfLinearModule* m;
  std::vector<Block> blocks;
  int64_t out_total = 0, in = 0;
};

std::vector<HfWeight> hf_weights(models::CausalLM& model, const std::vector<HfLinearModule>& mods) {
  std::vector<HfWeight> out;
  for (const HfLinearModule& m : mods) {
    HfWeight w{&m, {}, 0, 0};
    for (const auto& n : m.lathe_names) {
      auto lin = std::dynamic_pointer_cast<models::LinearLayer>(model.module(n));
      LATHE_CHECK(lin) << "SpIEL adapter: " << n << " is not a linear layer";
      w.blocks.push_back({n, w.out_total, lin->out_features(), lin->in_features()});
      w.out_total += lin->out_features();
      w.in = lin->in_features();
    }
    out.push_back(w);
  }
  return out;
}

ojson read_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / kConfig).string();
  std::ifstream f(path);
  LATHE_REQUIRE(f.good()) << "SpIEL adapter: cannot open " << path;
  try {
    ojson c = ojson::parse(f);
    LATHE_REQUIRE(c.is_object()) << path << " must hold a JSON object";
    return c;
  } catch (const ojson::exception& e) {
    LATHE_FAIL() << path << " is not valid JSON: " << e.what();
  }
  return {};
}

}  // namespace

bool is_spiel_adapter(const std::string& dir) {
  if (!fs::exists(fs::path(dir) / kConfig)) return false;
  const ojson c = read_config(dir);
  auto it = c.find("peft_type");
  return it != c.end() && it->is_string() && it->get<std::string>() == "SFT";
}

void save_spiel_adapter(models::CausalLM& model, const std::string& dir, const std::string& base) {
  const std::string where = "save_spiel_adapter(" + dir + ")";
  const auto mods = hf_linear_modules(model.spec());
  LATHE_REQUIRE(!mods.empty()) << where << ": the " << models::arch_name(model.spec().arch)
                             << " model has no Hugging Face layout";
  std::map<std::string, SparseDeltaLinear*> layers;
  for (auto& [n, l] : spiel_layers(model)) {
    LATHE_REQUIRE(!l->merged()) << where << ": the delta of " << n << " is merged; unmerge it before saving";
    layers[n] = l;
  }
  LATHE_REQUIRE(!layers.empty()) << where << ": the model carries no SpIEL delta";
  autograd::NoGradGuard ng;
  models::NamedTensors tensors;
  ojson targets = ojson::array(), num = ojson::object();
  size_t covered = 0;
  for (const HfWeight& w : hf_weights(model, mods)) {
    std::vector<int64_t> idx;
    std::vector<float> val;
    for (const Block& b : w.blocks) {
      auto it = layers.find(b.name);
      if (it == layers.end()) continue;
      ++covered;
      const auto li = it->second->indices().to(Device::cpu()).to_vector<int64_t>();
      const auto lv = it->second->values().to(DType::f32).to(Device::cpu()).contiguous().to_vector<float>();
      for (size_t i = 0; i < li.size(); ++i) {
        const int64_t r = b.row0 + li[i] / b.in, c = li[i] % b.in;
        idx.push_back(w.m->conv1d ? c * w.out_total + r : r * w.in + c);
        val.push_back(lv[i]);
      }
    }
    if (idx.empty()) continue;
    const int64_t k = static_cast<int64_t>(idx.size());
    tensors.emplace_back(kPrefix + w.m->hf_name + ".sft_delta.indices", Tensor::from_vector<int64_t>(idx, {k}));
    tensors.emplace_back(kPrefix + w.m->hf_name + ".sft_delta.values", Tensor::from_vector<float>(val, {k}));
    targets.push_back(w.m->hf_name);
    num[w.m->hf_name] = k;
  }
  LATHE_REQUIRE(covered == layers.size()) << where << ": " << layers.size() - covered
                                          << " SpIEL deltas have no place in the Hugging Face layout";
  fs::create_directories(dir);
  models::SafetensorsWriteOptions wo;
  wo.metadata["format"] = "pt";
  models::save_safetensors((fs::path(dir) / kWeights).string(), tensors, wo);
  ojson c;
  c["peft_type"] = "SFT";
  c["task_type"] = "CAUSAL_LM";
  c["base_model_name_or_path"] = base.empty() ? ojson(nullptr) : ojson(base);
  c["target_modules"] = targets;
  c["num_deltas"] = num;
  c["inference_mode"] = true;
  write_file_atomic((fs::path(dir) / kConfig).string(), c.dump(2) + "\n");
}

InjectResult load_spiel_adapter(models::CausalLM& model, const std::string& dir) {
  const std::string cfg_path = (fs::path(dir) / kConfig).string();
  const std::string st_path = (fs::path(dir) / kWeights).string();
  const ojson c = read_config(dir);
  auto type = c.find("peft_type");
  LATHE_REQUIRE(type != c.end() && type->is_string() && type->get<std::string>() == "SFT")
      << cfg_path << ": peft_type must be \"SFT\" for a SpIEL adapter";
  const auto mods = hf_linear_modules(model.spec());
  const auto weights = hf_weights(model, mods);
  models::SafetensorsFile st(st_path);
  // Every tensor must have a place: <HF module>.sft_delta.{values,indices} of a linear module.
  std::map<std::string, const HfWeight*> by_hf;
  for (const HfWeight& w : weights) by_hf[std::string(kPrefix) + w.m->hf_name] = &w;
  std::map<const HfWeight*, int> seen;
  for (const auto& name : st.names()) {
    const std::string v = ".sft_delta.values", i = ".sft_delta.indices";
    std::string mod;
    if (name.size() > v.size() && name.compare(name.size() - v.size(), v.size(), v) == 0)
      mod = name.substr(0, name.size() - v.size());
    else if (name.size() > i.size() && name.compare(name.size() - i.size(), i.size(), i) == 0)
      mod = name.substr(0, name.size() - i.size());
    auto it = by_hf.find(mod);
    LATHE_REQUIRE(!mod.empty() && it != by_hf.end())
        << st_path << ": tensor " << name << " is not the sft_delta of a linear module of this "
        << models::arch_name(model.spec().arch) << " model";
    seen[it->second] += 1;
  }
  struct Fill {
    std::string name;
    std::vector<int64_t> idx;
    std::vector<float> val;
  };
  std::vector<Fill> fills;
  for (const auto& [w, n] : seen) {
    const std::string key = kPrefix + w->m->hf_name + ".sft_delta.";
    LATHE_REQUIRE(n == 2) << st_path << ": " << key << "values and " << key << "indices must come together";
    const Tensor it = st.get(key + "indices"), vt = st.get(key + "values");
    LATHE_REQUIRE(it.dim() == 1 && vt.dim() == 1 && it.numel() == vt.numel() &&
                  (it.dtype() == DType::i64 || it.dtype() == DType::i32))
        << st_path << ": " << key << "indices (" << it.shape_str() << " " << dtype_name(it.dtype()) << ") and values ("
        << vt.shape_str() << ") must be vectors of one length, the indices I64 or I32";
    const auto idx = it.to(DType::i64).to_vector<int64_t>();
    const auto val = vt.to(DType::f32).contiguous().to_vector<float>();
    const int64_t numel = w->out_total * w->in;
    std::vector<Fill> part(w->blocks.size());
    for (size_t b = 0; b < w->blocks.size(); ++b) part[b].name = w->blocks[b].name;
    for (size_t j = 0; j < idx.size(); ++j) {
      LATHE_REQUIRE(idx[j] >= 0 && idx[j] < numel)
          << st_path << ": " << key << "indices[" << j << "] = " << idx[j] << " is outside the weight's " << numel
          << " entries";
      const int64_t r = w->m->conv1d ? idx[j] % w->out_total : idx[j] / w->in;
      const int64_t col = w->m->conv1d ? idx[j] / w->out_total : idx[j] % w->in;
      for (size_t b = 0; b < w->blocks.size(); ++b) {
        const Block& bl = w->blocks[b];
        if (r < bl.row0 || r >= bl.row0 + bl.out) continue;
        part[b].idx.push_back((r - bl.row0) * bl.in + col);
        part[b].val.push_back(val[j]);
      }
    }
    for (auto& p : part)
      if (!p.idx.empty()) fills.push_back(std::move(p));
  }
  LATHE_REQUIRE(!fills.empty()) << st_path << ": no sft_delta tensors";
  // Checked before anything changes: budgets of modules that already carry a delta.
  for (const Fill& f : fills) {
    if (auto* l = dynamic_cast<SparseDeltaLinear*>(model.module(f.name).get()))
      LATHE_REQUIRE(l->budget() == static_cast<int64_t>(f.idx.size()))
          << st_path << ": " << f.idx.size() << " entries for " << f.name << ", whose SpIEL delta has a budget of "
          << l->budget();
  }
  InjectResult res;
  model.freeze();
  Generator unused(0);  // the indices are replaced right away
  for (const Fill& f : fills) {
    const int64_t k = static_cast<int64_t>(f.idx.size());
    auto cur = model.module(f.name);
    auto* l = dynamic_cast<SparseDeltaLinear*>(cur.get());
    if (!l) {
      auto lin = std::dynamic_pointer_cast<models::LinearLayer>(cur);
      auto sd = std::make_shared<SparseDeltaLinear>(lin, k, unused);
      model.replace_module(f.name, sd);
      l = sd.get();
    }
    l->set_indices(Tensor::from_vector<int64_t>(f.idx, {k}), st_path + " (" + f.name + ")");
    autograd::NoGradGuard ng;
    l->values().copy_(Tensor::from_vector<float>(f.val, {k}).to(l->values().device()));
    l->values().set_requires_grad(true);
    PlannedAdapter a;
    a.name = f.name;
    a.in = l->in_features();
    a.out = l->out_features();
    a.k = k;
    res.adapters.push_back(a);
  }
  return res;
}

}  // namespace lathe::peft
