#include "peft/adapter_io.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <cstring>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "core/fs.h"
#include "kernels/ops.h"
#include "models/hf_config.h"
#include "models/hf_export.h"
#include "models/hf_import.h"
#include "models/safetensors.h"

namespace lathe::peft {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

const char* const kPrefix = "base_model.model.";
const char* const kWeights = "adapter_model.safetensors";
const char* const kConfig = "adapter_config.json";

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

std::string module_of(const std::string& param) { return param.substr(0, param.rfind('.')); }

// A number as JSON: an integer when it is one (peft writes lora_alpha as an int).
ojson number(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::abs(v) < 1e15) return static_cast<int64_t>(v);
  return v;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

std::string join_num(const std::vector<double>& v) {
  std::ostringstream o;
  o.precision(17);
  for (size_t i = 0; i < v.size(); ++i) o << (i ? "," : "") << v[i];
  return o.str();
}

std::vector<double> parse_nums(const std::string& s, const std::string& where) {
  std::vector<double> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      out.push_back(std::stod(item));
    } catch (const std::exception&) {
      LATHE_FAIL() << where << ": '" << s << "' is not a list of numbers";
    }
  }
  return out;
}

// lathe's split of a stacked c_attn adapter: "r=..;alpha=..;folded=0|1".
struct Split {
  std::vector<int64_t> r;
  std::vector<double> alpha;
  bool folded = false;
};

Split parse_split(const std::string& v, size_t n, const std::string& where) {
  Split s;
  std::stringstream ss(v);
  std::string part;
  while (std::getline(ss, part, ';')) {
    const size_t eq = part.find('=');
    LATHE_REQUIRE(eq != std::string::npos) << where << ": malformed entry '" << v << "'";
    const std::string k = part.substr(0, eq), val = part.substr(eq + 1);
    if (k == "r") {
      for (double d : parse_nums(val, where)) s.r.push_back(static_cast<int64_t>(d));
    } else if (k == "alpha") {
      s.alpha = parse_nums(val, where);
    } else if (k == "folded") {
      s.folded = val == "1";
    }
  }
  LATHE_REQUIRE(s.r.size() == n && s.alpha.size() == n)
      << where << ": '" << v << "' must give " << n << " ranks and alphas";
  return s;
}

template <typename T>
T get_or(const ojson& j, const char* key, T dflt, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  try {
    return it->get<T>();
  } catch (const ojson::exception& e) {
    LATHE_FAIL() << where << ": field " << key << " has the wrong type (" << e.what() << ")";
  }
  return dflt;
}

}  // namespace

AdapterSaveOptions save_options(const PeftOptions& o, const InjectResult& res, const std::string& base) {
  AdapterSaveOptions s;
  s.base_model_name_or_path = base;
  s.r = o.lora.r;
  s.alpha = o.lora.alpha;
  s.dropout = o.lora.dropout;
  s.use_rslora = o.lora.use_rslora;
  s.init = o.lora.init;
  s.bias = o.bias;
  s.modules_to_save = res.modules_to_save;
  return s;
}

void save_adapter(models::CausalLM& model, const std::string& dir, const AdapterSaveOptions& o) {
  const std::string where = "save_adapter(" + dir + ")";
  const models::ModelSpec& spec = model.spec();
  const std::vector<HfLinearModule> mods = hf_linear_modules(spec);
  LATHE_REQUIRE(!mods.empty()) << where << ": the " << models::arch_name(spec.arch)
                             << " model has no Hugging Face layout, so no peft layout either";
  // Every method of the family is written as plain LoRA (LoraLinear::lora_factors: LoRA-SB's
  // A' = R A, NOLA's materialised factors, SoRA's pruned ranks with the gate folded into B).
  std::map<std::string, const LoraFactors*> adapters;
  std::map<std::string, LoraFactors> factors;
  for (auto& [name, l] : lora_layers(model)) {
    LATHE_REQUIRE(!l->merged()) << where << ": the adapter of " << name << " is merged; unmerge it before saving";
    LATHE_REQUIRE(l->use_rslora() == o.use_rslora)
        << where << ": " << name << " has use_rslora=" << l->use_rslora() << ", the adapter config says "
        << o.use_rslora << " (peft has one setting per adapter)";
    adapters[name] = &(factors[name] = l->lora_factors());
  }
  LATHE_REQUIRE(!adapters.empty()) << where << ": the model carries no LoRA adapter";
  const std::vector<models::HfTensorRule> rules = models::hf_tensor_layout(spec, models::hf_default_prefix(spec.arch));

  models::NamedTensors tensors;
  models::SafetensorsWriteOptions wo;
  wo.metadata["format"] = "pt";
  ojson targets = ojson::array(), rank_pattern = ojson::object(), alpha_pattern = ojson::object();
  std::set<std::string> covered;
  std::vector<std::string> adapted_hf;
  bool conv1d = false;
  autograd::NoGradGuard no_grad;
  for (const HfLinearModule& m : mods) {
    std::vector<const LoraFactors*> ls;
    bool any = false;
    for (const auto& n : m.lathe_names) {
      auto it = adapters.find(n);
      ls.push_back(it == adapters.end() ? nullptr : it->second);
      any = any || ls.back() != nullptr;
      if (ls.back()) covered.insert(n);
    }
    if (!any) continue;
    conv1d = conv1d || m.conv1d;
    Tensor A, B;
    int64_t r = 0;
    double alpha = 0;
    // The scale of a plain-LoRA form (rank and alpha as exported).
    auto scaling_of = [&](const LoraFactors* f) { return lora_scaling(f->r, f->alpha, o.use_rslora); };
    if (ls.size() == 1) {
      A = ls[0]->A;
      B = ls[0]->B;
      r = ls[0]->r;
      alpha = ls[0]->alpha;
    } else {
      bool shared = true;
      for (const LoraFactors* l : ls)
        shared = shared && l && l->r == ls[0]->r && l->alpha == ls[0]->alpha && same_bits(l->A, ls[0]->A);
      int64_t out_total = 0, in = 0;
      for (size_t i = 0; i < ls.size(); ++i) {
        auto lin = std::dynamic_pointer_cast<models::LinearLayer>(model.module(m.lathe_names[i]));
        out_total += lin->out_features();
        in = lin->in_features();
      }
      if (shared) {
        // One adapter of rank r: A shared, B = [B_q; B_k; B_v].
        r = ls[0]->r;
        alpha = ls[0]->alpha;
        A = ls[0]->A;
        B = Tensor::zeros({out_total, r});
        int64_t off = 0;
        for (const LoraFactors* l : ls) {
          B.narrow(0, off, l->B.size(0)).copy_(l->B);
          off += l->B.size(0);
        }
      } else {
        // Stacked ranks: A = [A_q; A_k; A_v], B = blockdiag(B_q, B_k, B_v).
        std::vector<double> rs, alphas;
        double s0 = 0;
        bool uniform = true;
        for (const LoraFactors* l : ls) {
          rs.push_back(l ? static_cast<double>(l->r) : 0.0);
          alphas.push_back(l ? l->alpha : 0.0);
          if (!l) continue;
          if (s0 == 0) s0 = scaling_of(l);
          uniform = uniform && scaling_of(l) == s0;
          r += l->r;
        }
        const double sq = o.use_rslora ? std::sqrt(static_cast<double>(r)) : static_cast<double>(r);
        alpha = uniform ? s0 * sq : sq;  // gives scale s0 (blocks as they are) or 1 (scales folded into B)
        A = Tensor::zeros({r, in});
        B = Tensor::zeros({out_total, r});
        int64_t row = 0, col = 0;
        for (size_t i = 0; i < ls.size(); ++i) {
          auto lin = std::dynamic_pointer_cast<models::LinearLayer>(model.module(m.lathe_names[i]));
          const int64_t out = lin->out_features();
          if (const LoraFactors* l = ls[i]) {
            A.narrow(0, col, l->r).copy_(l->A);
            Tensor blk = B.narrow(0, row, out).narrow(1, col, l->r);
            blk.copy_(l->B);
            if (!uniform) kernels::scale_(blk, scaling_of(l));
            col += l->r;
          }
          row += out;
        }
        std::vector<double> ri(rs.begin(), rs.end());
        wo.metadata["lathe_split." + m.hf_name] =
            "r=" + join_num(ri) + ";alpha=" + join_num(alphas) + ";folded=" + (uniform ? "0" : "1");
      }
    }
    tensors.emplace_back(kPrefix + m.hf_name + ".lora_A.weight", A.contiguous());
    tensors.emplace_back(kPrefix + m.hf_name + ".lora_B.weight", B.contiguous());
    targets.push_back(m.hf_name);
    adapted_hf.push_back(m.hf_name);
    if (r != o.r) rank_pattern[m.hf_name] = r;
    if (alpha != o.alpha) alpha_pattern[m.hf_name] = number(alpha);
  }
  for (const auto& [name, l] : adapters) {
    (void)l;
    LATHE_REQUIRE(covered.count(name)) << where << ": the adapter of " << name << " has no place in the Hugging Face "
                                     << models::arch_name(spec.arch) << " layout";
  }

  // Biases and modules_to_save under their transformers names.
  std::set<std::string> saved_hf_modules;
  std::set<std::string> written;
  const std::set<std::string> adapted_set(adapted_hf.begin(), adapted_hf.end());
  auto put_rule = [&](const models::HfTensorRule& rule) {
    if (!written.insert(rule.hf_name).second) return;
    // peft keeps the bias of a layer it wrapped under the wrapper's base_layer.
    const std::string mod = module_of(rule.hf_name);
    const std::string key = ends_with(rule.hf_name, ".bias") && adapted_set.count(mod)
                                ? kPrefix + mod + ".base_layer.bias"
                                : kPrefix + rule.hf_name;
    tensors.emplace_back(key, models::hf_tensor(model, rule, DType::f32).contiguous());
  };
  for (const auto& rule : rules) {
    const bool is_bias = ends_with(rule.hf_name, ".bias");
    if (is_bias && o.bias == BiasMode::all) put_rule(rule);
    if (is_bias && o.bias == BiasMode::lora_only) {
      for (const auto& hf : adapted_hf)
        if (rule.hf_name == hf + ".bias") put_rule(rule);
    }
    bool saved = !o.modules_to_save.empty();
    for (const auto& p : rule.params) {
      bool in = false;
      for (const auto& msave : o.modules_to_save) in = in || p.compare(0, msave.size() + 1, msave + ".") == 0;
      saved = saved && in;
    }
    if (saved) {
      put_rule(rule);
      saved_hf_modules.insert(module_of(rule.hf_name));
    }
  }

  fs::create_directories(dir);
  models::save_safetensors((fs::path(dir) / kWeights).string(), tensors, wo);

  ojson c;
  c["peft_type"] = "LORA";
  c["task_type"] = "CAUSAL_LM";
  c["base_model_name_or_path"] = o.base_model_name_or_path.empty() ? ojson(nullptr) : ojson(o.base_model_name_or_path);
  c["r"] = o.r;
  c["lora_alpha"] = number(o.alpha);
  c["lora_dropout"] = o.dropout;
  c["target_modules"] = targets;
  c["exclude_modules"] = nullptr;
  c["bias"] = bias_mode_name(o.bias);
  c["fan_in_fan_out"] = conv1d;
  c["use_rslora"] = o.use_rslora;
  c["use_dora"] = false;
  c["lora_bias"] = false;
  c["init_lora_weights"] = o.init == LoraInit::gaussian ? ojson("gaussian") : ojson(true);
  c["modules_to_save"] = saved_hf_modules.empty() ? ojson(nullptr) : ojson(saved_hf_modules);
  c["rank_pattern"] = rank_pattern;
  c["alpha_pattern"] = alpha_pattern;
  c["layers_to_transform"] = nullptr;
  c["layers_pattern"] = nullptr;
  c["inference_mode"] = true;
  c["revision"] = nullptr;
  write_file_atomic((fs::path(dir) / kConfig).string(), c.dump(2) + "\n");
}

LoadedAdapter load_adapter(models::CausalLM& model, const std::string& dir) {
  const std::string cfg_path = (fs::path(dir) / kConfig).string();
  const std::string st_path = (fs::path(dir) / kWeights).string();
  const std::string where = "load_adapter(" + dir + ")";
  ojson c;
  {
    std::ifstream f(cfg_path);
    LATHE_REQUIRE(f.good()) << where << ": cannot open " << cfg_path;
    try {
      c = ojson::parse(f);
    } catch (const ojson::exception& e) {
      LATHE_FAIL() << where << ": " << cfg_path << " is not valid JSON: " << e.what();
    }
  }
  LATHE_REQUIRE(c.is_object()) << where << ": " << cfg_path << " must hold a JSON object";
  const std::string cw = cfg_path;
  const std::string type = get_or<std::string>(c, "peft_type", "", cw);
  LATHE_REQUIRE(type == "LORA") << cfg_path << ": peft_type is \"" << type << "\"; lathe reads LORA adapters";
  LATHE_REQUIRE(!get_or<bool>(c, "use_dora", false, cw)) << cfg_path << ": use_dora is true; DoRA is not supported";
  LATHE_REQUIRE(!get_or<bool>(c, "lora_bias", false, cw)) << cfg_path << ": lora_bias is true; it is not supported";
  LoadedAdapter out;
  PeftOptions& po = out.options;
  po.lora.r = get_or<int64_t>(c, "r", 8, cw);
  po.lora.alpha = get_or<double>(c, "lora_alpha", 8, cw);
  po.lora.dropout = get_or<double>(c, "lora_dropout", 0, cw);
  po.lora.use_rslora = get_or<bool>(c, "use_rslora", false, cw);
  LATHE_REQUIRE(po.lora.r > 0) << cfg_path << ": r must be > 0 (got " << po.lora.r << ")";
  const std::string bias = get_or<std::string>(c, "bias", "none", cw);
  if (bias == "none") po.bias = BiasMode::none;
  else if (bias == "all") po.bias = BiasMode::all;
  else if (bias == "lora_only") po.bias = BiasMode::lora_only;
  else LATHE_FAIL() << cfg_path << ": bias \"" << bias << "\" is not one of none, all, lora_only";
  for (const char* pat : {"rank_pattern", "alpha_pattern"}) {
    auto it = c.find(pat);
    if (it == c.end() || it->is_null()) continue;
    LATHE_REQUIRE(it->is_object()) << cfg_path << ": " << pat << " must be an object";
    for (auto kv = it->begin(); kv != it->end(); ++kv) {
      LATHE_REQUIRE(kv.value().is_number()) << cfg_path << ": " << pat << "[" << kv.key() << "] must be a number";
      if (std::string(pat) == "rank_pattern") po.rank_pattern.emplace_back(kv.key(), kv.value().get<int64_t>());
      else po.alpha_pattern.emplace_back(kv.key(), kv.value().get<double>());
    }
  }

  models::SafetensorsFile st(st_path);
  const models::ModelSpec& spec = model.spec();
  const std::vector<HfLinearModule> mods = hf_linear_modules(spec);
  LATHE_REQUIRE(!mods.empty()) << where << ": the " << models::arch_name(spec.arch)
                             << " model has no Hugging Face layout, so no peft layout either";
  const std::vector<models::HfTensorRule> rules = models::hf_tensor_layout(spec, models::hf_default_prefix(spec.arch));

  struct Planned {
    const HfLinearModule* m;
    Tensor A, B;
    int64_t r;
    double alpha;
    bool split;
    Split sp;
  };
  std::vector<Planned> plan;
  std::set<std::string> used;
  auto lin = [&](const std::string& n) {
    auto l = std::dynamic_pointer_cast<models::LinearLayer>(model.module(n));
    LATHE_REQUIRE(l != nullptr) << where << ": " << n << " is not a linear layer";
    return l;
  };
  for (const HfLinearModule& m : mods) {
    const std::string ka = kPrefix + m.hf_name + ".lora_A.weight", kb = kPrefix + m.hf_name + ".lora_B.weight";
    const bool ha = st.contains(ka), hb = st.contains(kb);
    if (!ha && !hb) continue;
    LATHE_REQUIRE(ha && hb) << where << ": " << st_path << " holds " << (ha ? ka : kb) << " but not "
                          << (ha ? kb : ka) << "; a LoRA adapter needs both factors";
    Planned p{&m, st.get(ka), st.get(kb), po.lora.r, po.lora.alpha, false, {}};
    std::vector<std::string> rk, ak;
    for (const auto& kv : po.rank_pattern) rk.push_back(kv.first);
    for (const auto& kv : po.alpha_pattern) ak.push_back(kv.first);
    if (auto k = pattern_key(rk, m.hf_name, cfg_path + " rank_pattern"))
      for (const auto& kv : po.rank_pattern)
        if (kv.first == *k) p.r = kv.second;
    if (auto k = pattern_key(ak, m.hf_name, cfg_path + " alpha_pattern"))
      for (const auto& kv : po.alpha_pattern)
        if (kv.first == *k) p.alpha = kv.second;
    int64_t out_total = 0;
    const int64_t in = lin(m.lathe_names[0])->in_features();
    for (const auto& n : m.lathe_names) out_total += lin(n)->out_features();
    LATHE_REQUIRE(p.A.shape() == (Shape{p.r, in}))
        << where << ": tensor " << ka << " in " << st_path << " has shape " << p.A.shape_str() << ", expected "
        << shape_str({p.r, in}) << " (r = " << p.r << " from " << cfg_path << ", " << in << " input features)";
    LATHE_REQUIRE(p.B.shape() == (Shape{out_total, p.r}))
        << where << ": tensor " << kb << " in " << st_path << " has shape " << p.B.shape_str() << ", expected "
        << shape_str({out_total, p.r}) << " (r = " << p.r << " from " << cfg_path << ", " << out_total
        << " output features)";
    LATHE_REQUIRE(is_floating(p.A.dtype()) && is_floating(p.B.dtype()))
        << where << ": " << ka << " and " << kb << " must be floating tensors";
    auto meta = st.metadata().find("lathe_split." + m.hf_name);
    if (meta != st.metadata().end() && m.lathe_names.size() > 1) {
      p.split = true;
      p.sp = parse_split(meta->second, m.lathe_names.size(), st_path + " metadata lathe_split." + m.hf_name);
      int64_t total = 0;
      for (int64_t r : p.sp.r) total += r;
      LATHE_REQUIRE(total == p.r) << where << ": metadata lathe_split." << m.hf_name << " in " << st_path
                                << " splits rank " << total << ", the tensors have rank " << p.r;
    }
    used.insert(ka);
    used.insert(kb);
    plan.push_back(std::move(p));
  }
  LATHE_REQUIRE(!plan.empty()) << where << ": " << st_path << " holds no LoRA tensor of this "
                             << models::arch_name(spec.arch) << " model (expected keys like " << kPrefix
                             << mods.front().hf_name << ".lora_A.weight)";
  // Biases and modules_to_save: tensors under their transformers names.
  std::vector<std::pair<const models::HfTensorRule*, Tensor>> extra;
  for (const auto& rule : rules) {
    std::string key = kPrefix + rule.hf_name;
    if (!st.contains(key) && ends_with(rule.hf_name, ".bias"))
      key = kPrefix + module_of(rule.hf_name) + ".base_layer.bias";  // peft's name for a wrapped layer's bias
    if (!st.contains(key)) continue;
    std::vector<Shape> shapes;
    for (const auto& pn : rule.params) shapes.push_back(model.parameter(pn).shape());
    const Shape want = models::hf_tensor_shape(rule, shapes);
    Tensor t = st.get(key);
    LATHE_REQUIRE(t.shape() == want) << where << ": tensor " << key << " in " << st_path << " has shape "
                                   << t.shape_str() << ", expected " << shape_str(want);
    used.insert(key);
    extra.emplace_back(&rule, t);
  }
  for (const auto& name : st.names()) {
    LATHE_REQUIRE(used.count(name)) << where << ": tensor " << name << " in " << st_path
                                  << " has no place in the lathe " << models::arch_name(spec.arch) << " model";
  }
  // Layers that carry an adapter already must have its rank.
  auto rank_of = [&](const Planned& p, size_t i) { return p.split ? p.sp.r[i] : p.r; };
  for (const Planned& p : plan) {
    for (size_t i = 0; i < p.m->lathe_names.size(); ++i) {
      auto* l = dynamic_cast<LoraLinear*>(model.module(p.m->lathe_names[i]).get());
      if (!l) continue;
      LATHE_REQUIRE(std::string(l->method_name()) == "LoRA")
          << where << ": " << p.m->lathe_names[i] << " carries a " << l->method_name()
          << " adapter; a peft LoRA adapter loads into plain LoRA layers (unload it first)";
      LATHE_REQUIRE(l->rank() == rank_of(p, i) && !l->merged())
          << where << ": " << p.m->lathe_names[i] << " carries an adapter of rank " << l->rank()
          << (l->merged() ? " (merged)" : "") << "; " << st_path << " gives rank " << rank_of(p, i);
    }
  }

  // ---- apply ----
  autograd::NoGradGuard no_grad;
  model.freeze();
  Generator unused(0);
  for (const Planned& p : plan) {
    int64_t row = 0, col = 0;
    for (size_t i = 0; i < p.m->lathe_names.size(); ++i) {
      const std::string& n = p.m->lathe_names[i];
      auto base = lin(n);
      const int64_t nout = base->out_features();
      const int64_t r = rank_of(p, i);
      const double alpha = p.split ? p.sp.alpha[i] : p.alpha;
      if (r == 0) {  // a projection the stacked adapter left out
        row += nout;
        continue;
      }
      auto l = std::dynamic_pointer_cast<LoraLinear>(base);
      if (!l) {
        LoraOptions lo = po.lora;
        lo.r = r;
        lo.alpha = alpha;
        lo.init = LoraInit::zeros;
        l = std::make_shared<LoraLinear>(base, lo, unused, &model.dropout_generator());
        model.replace_module(n, l);
      }
      Tensor a = p.split ? p.A.narrow(0, col, r) : p.A;
      Tensor b = p.B.narrow(0, row, nout);
      if (p.split) b = b.narrow(1, col, r);
      l->lora_A().copy_(a);
      if (p.split && p.sp.folded) {
        Tensor bf = b.to(DType::f32).contiguous();
        kernels::scale_(bf, 1.0 / l->scaling());
        l->lora_B().copy_(bf);
      } else {
        l->lora_B().copy_(b);
      }
      l->lora_A().set_requires_grad(true);
      l->lora_B().set_requires_grad(true);
      out.injected.adapters.push_back({n, p.m->hf_name, base->in_features(), nout, r, alpha});
      row += nout;
      if (p.split) col += r;
    }
  }
  std::set<std::string> saved_modules;
  for (const auto& [rule, t] : extra) {
    std::vector<Tensor> params;
    for (const auto& pn : rule->params) params.push_back(model.parameter(pn));
    models::copy_hf_tensor(*rule, t, params);
    const bool is_bias = ends_with(rule->hf_name, ".bias");
    if (is_bias && po.bias != BiasMode::none) continue;  // set by the bias mode below
    for (size_t i = 0; i < params.size(); ++i) {
      params[i].set_requires_grad(true);
      saved_modules.insert(module_of(rule->params[i]));
    }
  }
  out.injected.modules_to_save.assign(saved_modules.begin(), saved_modules.end());
  if (po.bias == BiasMode::all) {
    for (auto& [n, p] : model.named_parameters())
      if (ends_with(n, ".bias")) p.set_requires_grad(true);
  } else if (po.bias == BiasMode::lora_only) {
    for (const auto& a : out.injected.adapters) {
      Tensor b = std::dynamic_pointer_cast<LoraLinear>(model.module(a.name))->base_bias();
      if (b.defined()) b.set_requires_grad(true);
    }
  }
  return out;
}

}  // namespace lathe::peft
