#include "models/hf_export.h"

#include <filesystem>
#include <regex>
#include <set>

#include "core/error.h"
#include "models/hf_config.h"

namespace lathe::models {

namespace fs = std::filesystem;

NamedTensors hf_state_dict(const CausalLM& model, DType dtype) {
  LATHE_CHECK(is_floating(dtype)) << "hf_state_dict: dtype " << dtype_name(dtype) << " is not a floating dtype";
  const ModelSpec& s = model.spec();
  const std::vector<HfTensorRule> rules = hf_tensor_layout(s, hf_default_prefix(s.arch));
  std::set<std::string> covered;
  NamedTensors out;
  out.reserve(rules.size());
  for (const HfTensorRule& r : rules) {
    std::vector<Tensor> ps;
    std::vector<Shape> shapes;
    for (const auto& name : r.params) {
      LATHE_CHECK(model.has_parameter(name)) << "hf_state_dict: the " << arch_name(s.arch) << " model has no parameter "
                                             << name << " (needed for " << r.hf_name << ")";
      ps.push_back(model.parameter(name));
      shapes.push_back(ps.back().shape());
      covered.insert(name);
    }
    Tensor t;
    if (r.kind == HfTensorRule::Kind::same) {
      t = ps[0].to(dtype);
    } else if (ps.size() == 1) {
      t = (ps[0].dim() == 2 ? ps[0].transpose(0, 1) : ps[0]).to(dtype);  // the writer packs strided views
    } else {
      // Fused Conv1D (c_attn): [in, q | k | v] for weights, [q | k | v] for biases.
      t = Tensor::empty(hf_tensor_shape(r, shapes), dtype);
      int64_t off = 0;
      for (const Tensor& p : ps) {
        const int64_t n = p.size(0);
        t.narrow(t.dim() - 1, off, n).copy_(p.dim() == 2 ? p.transpose(0, 1) : p);
        off += n;
      }
    }
    out.emplace_back(r.hf_name, t);
  }
  for (const auto& [name, t] : model.named_parameters()) {
    (void)t;
    LATHE_CHECK(covered.count(name)) << "hf_state_dict: parameter " << name << " has no place in the Hugging Face "
                                     << arch_name(s.arch) << " layout (merge adapters before exporting)";
  }
  return out;
}

void save_hf_model(const CausalLM& model, const std::string& dir, DType dtype, int64_t max_shard_bytes) {
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
  write_hf_config(model.spec(), (fs::path(dir) / "config.json").string(), dtype);
}

}  // namespace lathe::models
