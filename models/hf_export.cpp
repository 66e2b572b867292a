#include "models/hf_export.h"

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "models/hf_config.h"

namespace lathe::models {

namespace fs = std::filesystem;

Tensor hf_tensor(const CausalLM& model, const HfTensorRule& r, DType dtype) {
  const ModelSpec& s = model.spec();
  std::vector<Tensor> ps;
  std::vector<Shape> shapes;
  for (const auto& name : r.params) {
    LATHE_CHECK(model.has_parameter(name)) << "hf_state_dict: the " << arch_name(s.arch) << " model has no parameter "
                                           << name << " (needed for " << r.hf_name << ")";
    ps.push_back(model.parameter(name));
    shapes.push_back(ps.back().shape());
  }
  if (r.kind == HfTensorRule::Kind::same) return ps[0].to(dtype);
  if (ps.size() == 1) return (ps[0].dim() == 2 ? ps[0].transpose(0, 1) : ps[0]).to(dtype);  // the writer packs strided views
  // Fused Conv1D (c_attn): [in, q | k | v] for weights, [q | k | v] for biases.
  Tensor t = Tensor::empty(hf_tensor_shape(r, shapes), dtype);
  int64_t off = 0;
  for (const Tensor& p : ps) {
    const int64_t n = p.size(0);
    t.narrow(t.dim() - 1, off, n).copy_(p.dim() == 2 ? p.transpose(0, 1) : p);
    off += n;
  }
  return t;
}

NamedTensors hf_state_dict(const CausalLM& model, DType dtype) {
  LATHE_CHECK(is_floating(dtype)) << "hf_state_dict: dtype " << dtype_name(dtype) << " is not a floating dtype";
  const ModelSpec& s = model.spec();
  const std::vector<HfTensorRule> rules = hf_tensor_layout(s, hf_default_prefix(s.arch));
  std::set<std::string> covered;
  NamedTensors out;
  out.reserve(rules.size());
  for (const HfTensorRule& r : rules) {
    out.emplace_back(r.hf_name, hf_tensor(model, r, dtype));
    covered.insert(r.params.begin(), r.params.end());
  }
  for (const auto& [name, t] : model.named_parameters()) {
    (void)t;
    LATHE_CHECK(covered.count(name)) << "hf_state_dict: parameter " << name << " has no place in the Hugging Face "
                                     << arch_name(s.arch) << " layout (merge adapters before exporting)";
  }
  return out;
}

namespace {

using ojson = nlohmann::ordered_json;

void put_ids(ojson& j, const HfTokenIds& t) {
  if (t.bos) j["bos_token_id"] = *t.bos;
  if (t.eos) j["eos_token_id"] = *t.eos;
  if (t.pad) j["pad_token_id"] = *t.pad;
}

}  // namespace

std::string hf_generation_config_json(const HfTokenIds& tokens) {
  ojson j;
  j["_from_model_config"] = true;  // as transformers writes it when no generation settings were given
  put_ids(j, tokens);
  return j.dump(2) + "\n";
}

void save_hf_model(const CausalLM& model, const std::string& dir, DType dtype, int64_t max_shard_bytes,
                   const HfTokenIds& tokens) {
  const std::string where = "save_hf_model(" + dir + ")";
  LATHE_CHECK(dtype == DType::f32 || dtype == DType::bf16 || dtype == DType::f16)
      << where << ": dtype " << dtype_name(dtype) << " is not one of f32, bf16, f16";
  LATHE_CHECK(max_shard_bytes >= 0) << where << ": max_shard_bytes must be >= 0 (got " << max_shard_bytes << ")";
  // Check the config first: a spec with no HF form must fail before any file is touched.
  (void)hf_config_json(model.spec(), dtype);
  NamedTensors tensors = hf_state_dict(model, dtype);

  SafetensorsWriteOptions opts;
  opts.metadata["format"] = "pt";  // transformers refuses safetensors files without it
  const std::vector<std::string> written =
      save_safetensors_sharded(dir, tensors, static_cast<uint64_t>(max_shard_bytes), opts);
  tensors.clear();

  // Remove weight files of an earlier save that the new checkpoint does not use. The new
  // index (when sharded) is already complete, so the directory never loads a mix.
  const std::set<std::string> keep(written.begin(), written.end());
  static const std::regex shard_re(R"(model-\d{5}-of-\d{5}\.safetensors)");
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (keep.count(name)) continue;
    if (name == "model.safetensors" || std::regex_match(name, shard_re)) fs::remove(e.path(), ec);
  }
  write_file_atomic((fs::path(dir) / "generation_config.json").string(), hf_generation_config_json(tokens));
  ojson config = hf_config_json(model.spec(), dtype);
  put_ids(config, tokens);
  write_file_atomic((fs::path(dir) / "config.json").string(), config.dump(2) + "\n");
}

}  // namespace lathe::models
