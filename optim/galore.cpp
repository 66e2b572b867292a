#include "optim/galore.h"

#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "kernels/ops.h"
#include "optim/blockwise8.h"
#include "optim/fira.h"
#include "optim/natural_galore.h"

namespace lathe::optim {

using kernels::BinaryOp;

const char* const kDefaultGaLoreTarget = R"((.*\.)?(attn|mlp)\..*weight)";

namespace {

// A stable 64-bit hash of a parameter name (FNV-1a): the randomized refresh's RNG stream,
// the same in every process and build.
uint64_t name_seed(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::string group_label(const ParamGroup& g, size_t i) {
  return "group '" + (g.name.empty() ? "#" + std::to_string(i) : g.name) + "'";
}

}  // namespace

std::vector<std::string> GaLore::check_options(const std::vector<ParamGroup>& groups, const GaLoreOptions& o) {
  std::vector<std::string> p;
  if (!(o.lr >= 0)) p.push_back("lr: must be >= 0");
  if (!(o.beta1 >= 0 && o.beta1 < 1)) p.push_back("beta1: must be in [0, 1)");
  if (!(o.beta2 >= 0 && o.beta2 < 1)) p.push_back("beta2: must be in [0, 1)");
  if (!(o.eps > 0)) p.push_back("eps: must be > 0");
  if (o.rank <= 0) p.push_back("galore.rank: must be > 0 (got " + std::to_string(o.rank) + ")");
  if (o.update_proj_gap <= 0)
    p.push_back("galore.update_proj_gap: must be > 0 (got " + std::to_string(o.update_proj_gap) + ")");
  if (!std::isfinite(o.scale) || o.scale <= 0) p.push_back("galore.scale: must be a finite number > 0");
  if (o.svd_oversample < 0) p.push_back("galore.svd_oversample: must be >= 0");
  if (o.svd_power_iters < 0) p.push_back("galore.svd_power_iters: must be >= 0");
  if (o.state_bits != 32 && o.state_bits != 8) p.push_back("state_bits: must be 8 or 32");
  if (o.state_bits == 8 && (o.block_size < 64 || o.block_size > 4096 || (o.block_size & (o.block_size - 1)) != 0))
    p.push_back("eight_bit.block_size: must be a power of two from 64 to 4096");
  try {
    std::regex re(o.f32_params, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    p.push_back("eight_bit.f32_params: \"" + o.f32_params + "\" is not a valid regex (" + e.what() + ")");
  }
  if (o.natural && o.fira)
    p.push_back("galore.natural: Natural GaLore preconditions GaLore's projected gradient; it is not defined for "
                "FIRA (use optimizer.type GALORE, or set galore.natural: false)");
  if (o.natural_history < 1)
    p.push_back("galore.natural_history: must be >= 1 (got " + std::to_string(o.natural_history) + ")");
  if (!std::isfinite(o.natural_lambda) || o.natural_lambda <= 0)
    p.push_back("galore.natural_lambda: must be a finite number > 0");
  if (o.fira && !(o.fira_gamma >= 1)) p.push_back("fira.gamma: must be >= 1 (it bounds the growth of the residual's norm)");
  try {
    std::regex re(o.target.empty() ? kDefaultGaLoreTarget : o.target, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    p.push_back("galore.target: \"" + o.target + "\" is not a valid regex (" + e.what() + ")");
  }
  // A group's own options (only those it sets: the defaults were checked above).
  for (size_t i = 0; i < groups.size(); ++i) {
    const ParamGroup& g = groups[i];
    const std::string where = group_label(g, i) + ": option ";
    try {
      if (g.options.count("rank") && g.option_int("rank", 0) <= 0)
        p.push_back(where + "rank: must be > 0 (got " + std::to_string(g.option_int("rank", 0)) + ")");
      if (g.options.count("update_proj_gap") && g.option_int("update_proj_gap", 0) <= 0)
        p.push_back(where + "update_proj_gap: must be > 0 (got " + std::to_string(g.option_int("update_proj_gap", 0)) + ")");
      if (g.options.count("scale")) {
        const double s = g.option_double("scale", 0);
        if (!std::isfinite(s) || s <= 0) p.push_back(where + "scale: must be a finite number > 0");
      }
      if (g.options.count("proj_type")) {
        ProjType pt;
        const std::string v = g.option_string("proj_type", "");
        if (!try_parse_proj_type(v, pt))
          p.push_back(where + "proj_type: unknown projection type \"" + v +
                      "\" (expected std, reverse_std, left, right or full)");
        else if (o.fira && pt == ProjType::full)
          p.push_back(where + "proj_type: Fira needs a one-sided projection (std, reverse_std, left or right), not full");
      }
    } catch (const Error& e) {
      p.push_back(where + e.message());
    }
  }
  if (o.fira && o.proj_type == ProjType::full)
    p.push_back("galore.proj_type: Fira needs a one-sided projection (std, reverse_std, left or right), not FULL");
  // A ZeRO shard (parallel/zero.h) may own no projected matrix; the whole model was checked.
  bool shard = false;
  for (const auto& g : groups) shard = shard || g.option_bool("zero_shard", false);
  if (p.empty() && !shard && select_projected(groups, o).empty())
    p.push_back("galore.target: \"" + (o.target.empty() ? std::string(kDefaultGaLoreTarget) : o.target) +
                "\" matches no trainable 2-D parameter, so nothing would be projected (check the parameter names "
                "with 'lathe inspect')");
  return p;
}

GaLore::GaLore(std::vector<ParamGroup> groups, GaLoreOptions opts) : Optimizer(std::move(groups)), opts_(opts) {
  const std::vector<std::string> problems = check_options(groups_, opts_);
  if (!problems.empty()) {
    std::string all;
    for (const auto& s : problems) all += (all.empty() ? "" : "; ") + s;
    LATHE_FAIL() << name() << ": " << all;
  }
  for (const auto& g : groups_)
    for (const auto& [n, p] : g.params)
      LATHE_CHECK(p.dtype() == DType::f32) << name() << ": parameter '" << n << "' is " << dtype_name(p.dtype())
                                           << "; keep f32 master weights for the optimizer";
  projected_ = select_projected(groups_, opts_);
  f32_re_ = std::regex(opts_.f32_params.empty() ? std::string("$^") : opts_.f32_params, std::regex::ECMAScript);
  set_lr(opts_.lr);
}

std::set<std::string> GaLore::select_projected(const std::vector<ParamGroup>& groups, const GaLoreOptions& o) {
  const std::regex re(o.target.empty() ? kDefaultGaLoreTarget : o.target, std::regex::ECMAScript);
  std::set<std::string> out;
  for (const auto& g : groups)
    for (const auto& [n, p] : g.params)
      if (p.dim() == 2 && std::regex_match(n, re)) out.insert(n);
  return out;
}

GaLore::MatrixSettings GaLore::settings(const ParamGroup& g) const {
  MatrixSettings s;
  s.rank = g.option_int("rank", opts_.rank);
  s.gap = g.option_int("update_proj_gap", opts_.update_proj_gap);
  s.scale = g.option_double("scale", opts_.scale);
  s.proj_type = parse_proj_type(g.option_string("proj_type", proj_type_name(opts_.proj_type)),
                                "group '" + g.name + "': option proj_type");
  return s;
}

bool GaLore::uses_8bit(const std::string& name, const Shape& moment_shape) const {
  return opts_.state_bits == 8 && shape_numel(moment_shape) >= opts_.min_8bit_size && !std::regex_match(name, f32_re_);
}

StateMap GaLore::init_state(const std::string& name, const Tensor& param, const ParamGroup& group) const {
  const Device dev = param.device();
  Shape ms = param.shape();
  ProjSides sides;
  int64_t m = 0, n = 0, r = 0;
  if (projected(name)) {
    const MatrixSettings s = settings(group);
    m = param.size(0), n = param.size(1), r = effective_rank(s.rank, m, n);
    sides = proj_sides(s.proj_type, m, n);
    ms = projected_shape(sides, m, n, r);
  }
  StateMap st;
  if (uses_8bit(name, ms))
    st = init_moments8(ms, dev, opts_.block_size);
  else
    st = {{"exp_avg", Tensor::zeros(ms, DType::f32, dev)}, {"exp_avg_sq", Tensor::zeros(ms, DType::f32, dev)}};
  if (sides.left) st["ortho_left"] = Tensor::zeros({m, r}, DType::f32, dev);
  if (sides.right) st["ortho_right"] = Tensor::zeros({r, n}, DType::f32, dev);
  if (opts_.fira && projected(name)) st["scaling_grad"] = Tensor::zeros({}, DType::f32, dev);
  if (opts_.natural && projected(name))
    st["natural_history"] = Tensor::zeros({opts_.natural_history, shape_numel(ms)}, DType::f32, dev);
  return st;
}

Tensor GaLore::adam_delta(const std::string& name, const Tensor& x, StateMap& state, int64_t step,
                          kernels::AdamVariant variant) const {
  Tensor delta = Tensor::zeros(x.shape(), DType::f32, x.device());
  const Tensor xc = x.contiguous();
  if (has_moments8(state))
    adam_step8(delta, xc, state, "", 1.0, opts_.beta1, opts_.beta2, opts_.eps, 0.0, step, variant, opts_.block_size);
  else
    kernels::adamw_step(delta, xc, state.at("exp_avg"), state.at("exp_avg_sq"), 1.0, opts_.beta1, opts_.beta2,
                        opts_.eps, 0.0, step, variant);
  (void)name;
  return delta;
}

void GaLore::refresh(const std::string& name, const Tensor& g, const Projector& p, int64_t step, int64_t gap) {
  // Guard (spec section 8.2): a zero or non-finite gradient has no meaningful singular
  // vectors, and LAPACK may fail on it; keep the old basis. This reads one number back to the
  // host, once every T updates.
  const double norm = kernels::reduce(kernels::ReduceOp::norm, g, {}).item();
  std::string why;
  if (!std::isfinite(norm))
    why = "the gradient is not finite";
  else if (norm == 0)
    why = "the gradient is zero";
  if (why.empty()) {
    try {
      if (opts_.svd == SvdMethod::exact) {
        refresh_exact(g, p);
      } else {
        RandomizedSvdOptions ro;
        ro.oversample = opts_.svd_oversample;
        ro.power_iters = opts_.svd_power_iters;
        ro.seed = name_seed(name);
        ro.refresh_index = static_cast<uint64_t>((step - 1) / gap);
        ro.warm = step > 1;
        refresh_randomized(g, p, ro);
      }
      return;
    } catch (const Error& e) {
      why = std::string("the SVD failed: ") + e.what();
    }
  }
  ++skipped_refreshes_;
  if (step == 1) fill_canonical_basis(p);
  if (!warned_) {
    warned_ = true;
    std::fprintf(stderr, "lathe: %s: keeping the old projection basis of '%s' at update %lld because %s (logged once)\n",
                 this->name(), name.c_str(), static_cast<long long>(step), why.c_str());
  }
}

void GaLore::update(const std::string& name, const Tensor& param, const Tensor& grad, StateMap& state,
                    const ParamGroup& group, int64_t step) {
  using kernels::AdamVariant;
  const Tensor g = grad.to(DType::f32);
  if (!projected(name)) {
    // HF-style AdamW (spec section 1): the reference runs it on every parameter it does not
    // project; decay after the update is inside the kernel.
    if (has_moments8(state))
      adam_step8(param, g, state, "", group.lr, opts_.beta1, opts_.beta2, opts_.eps, group.weight_decay, step,
                 AdamVariant::hf, opts_.block_size);
    else
      kernels::adamw_step(param, g.contiguous(), state.at("exp_avg"), state.at("exp_avg_sq"), group.lr, opts_.beta1,
                          opts_.beta2, opts_.eps, group.weight_decay, step, AdamVariant::hf);
    return;
  }
  const double bc1 = 1 - std::pow(opts_.beta1, static_cast<double>(step));
  const double bc2 = 1 - std::pow(opts_.beta2, static_cast<double>(step));
  const MatrixSettings s = settings(group);
  Projector p;
  if (auto it = state.find("ortho_left"); it != state.end()) p.left = it->second;
  if (auto it = state.find("ortho_right"); it != state.end()) p.right = it->second;
  // Refresh at updates 1, T+1, 2T+1, ... (the reference tests step % T == 0 before counting).
  if ((step - 1) % s.gap == 0) refresh(name, g, p, step, s.gap);
  const Tensor r = p.project(g);
  const bool paper = opts_.fira && opts_.fira_form == FiraForm::paper;
  // Code form (GaLore, Fira's code): delta = -lr_factor N with N = M / (sqrt(V) + eps) and
  // lr_factor = sqrt(bc2)/bc1, the step W -= lr sqrt(bc2)/bc1 alpha back(N). Paper form (Fira
  // Alg. 1): delta = -N_hat from bias-corrected moments, and alpha scales the residual too.
  // Natural GaLore: the Adam moments see the Fisher-preconditioned projected gradient.
  const Tensor x = opts_.natural ? natural_gradient(r, state.at("natural_history"), step, opts_.natural_lambda) : r;
  const Tensor delta = adam_delta(name, x, state, step, paper ? AdamVariant::torch : AdamVariant::hf);
  if (!opts_.fira) {
    kernels::add_(param, p.project_back(delta), group.lr * s.scale);
  } else {
    FiraTerm t;
    t.paper = paper;
    t.scale = s.scale;
    t.eps = opts_.eps;
    t.gamma = opts_.fira_gamma;
    const double to_n = paper ? -1.0 : -bc1 / std::sqrt(bc2);  // delta -> the N that phi reads
    const Tensor res = fira_residual(g, r, kernels::affine(delta, to_n, 0.0), p, state.at("scaling_grad"), step == 1, t);
    kernels::add_(param, p.project_back(delta), group.lr * s.scale);
    kernels::add_(param, res, paper ? -group.lr * s.scale : -group.lr * std::sqrt(bc2) / bc1);
  }
  // Decay after the update, on the updated weight (GaLore/Fira/HF AdamW order).
  if (group.weight_decay != 0) kernels::scale_(param, 1 - group.lr * group.weight_decay);
}

}  // namespace lathe::optim
