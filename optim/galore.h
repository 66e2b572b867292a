// GaLore (Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
// Projection", 2024) and Fira (Chen et al., "Fira: Can We Achieve Full-rank Training of
// LLMs Under Low-rank Constraint?", 2024) in the form of their released code
// (../shared/specs/optimizers.md sections 2.3 and 3).
//
// The 2-D weights whose names match `target` keep Adam moments of the projected gradient
// R = project(G) (max(m,n) x r for std) and a basis refreshed from G at updates 1, T+1,
// 2T+1, ...; their update is W -= lr * sqrt(bc2)/bc1 * scale * project_back(M / (sqrt(V) + eps)),
// then W -= lr * wd * W (decay after the update, as the reference). Moments are never reset
// or re-projected when the basis changes. Every other parameter runs the same HF-style AdamW
// on its full gradient in the same optimizer.
//
// Fira adds the part of G the projection drops, scaled per row/column by how much Adam
// rescaled the projected gradient, under a norm-growth limiter; its state adds one f32
// scalar `scaling_grad` per projected matrix.
//
// State per projected matrix: exp_avg, exp_avg_sq (the projected shape, f32; or the four
// 8-bit entries of optim/blockwise8.h), ortho_left [m, r] and/or ortho_right [r, n] (f32),
// for Fira scaling_grad (0-d f32), and for Natural GaLore natural_history [s, numel(R)] (f32).
// Per-group options rank, update_proj_gap, scale,
// proj_type override the defaults for that group. The Adam arithmetic is the fused
// kernels::adamw_step (HF form) or adamw_step_8bit, run on the projected gradient into a zero
// tensor, as galore-torch's 8-bit variant does.
#pragma once

#include <regex>
#include <set>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "optim/optimizer.h"
#include "optim/projector.h"

namespace lathe::optim {

enum class SvdMethod { exact, randomized };
enum class FiraForm { code, paper };

struct GaLoreOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-6;  // galore-torch's and Fira's default (not torch's 1e-8)
  double weight_decay = 0.0;
  // Defaults for projected matrices; a group's options of the same names override them.
  int64_t rank = 128;
  int64_t update_proj_gap = 200;  // T
  double scale = 1.0;             // alpha
  ProjType proj_type = ProjType::std_;
  SvdMethod svd = SvdMethod::exact;
  int64_t svd_oversample = 8;
  int64_t svd_power_iters = 1;
  // ECMAScript regex over whole parameter names; empty: kDefaultTarget.
  std::string target;
  // 8-bit moments (optim/blockwise8.h): with state_bits 8, a moment (the projected one for a
  // projected matrix) with at least min_8bit_size elements, of a parameter whose name does not
  // match f32_params, is stored as blockwise 8-bit codes (GaLoreAdamW8bit: min_8bit_size
  // applies to the projected moment's element count).
  int state_bits = 32;
  int64_t block_size = 256;
  int64_t min_8bit_size = 4096;
  std::string f32_params;  // regex ("" = none)
  // Fira (off: GaLore).
  bool fira = false;
  FiraForm fira_form = FiraForm::code;
  double fira_gamma = 1.01;
  // Natural GaLore (optim/natural_galore.h): precondition each projected gradient by the
  // inverse empirical Fisher of its last natural_history projected gradients (damping
  // natural_lambda) before the Adam moments; GaLore only (not Fira). The reference's s = 20,
  // lambda = 1e-3.
  bool natural = false;
  int64_t natural_history = 20;
  double natural_lambda = 1e-3;
};

// The attention and MLP linears' weights of lathe's models ("layers.3.attn.q_proj.weight",
// "layers.3.mlp.down_proj.weight"), as the reference trainer selects modules named attn/mlp.
extern const char* const kDefaultGaLoreTarget;

class GaLore : public Optimizer {
 public:
  // Projects the 2-D parameters whose names match opts.target; problems with the options or
  // a group's options are errors naming the option (see check_options). A target that matches
  // no 2-D trainable parameter is an error (the run would silently be AdamW).
  GaLore(std::vector<ParamGroup> groups, GaLoreOptions opts);
  const char* name() const override { return opts_.fira ? "Fira" : opts_.natural ? "NaturalGaLore" : "GaLore"; }
  StateMap init_state(const std::string& name, const Tensor& param, const ParamGroup& group) const override;
  void update(const std::string& name, const Tensor& param, const Tensor& grad, StateMap& state,
              const ParamGroup& group, int64_t step) override;

  const GaLoreOptions& options() const { return opts_; }
  bool projected(const std::string& name) const { return projected_.count(name) > 0; }
  const std::set<std::string>& projected_names() const { return projected_; }
  // Basis refreshes that kept the old basis because the gradient was zero, not finite or the
  // SVD failed (also logged once to stderr).
  int64_t skipped_refreshes() const { return skipped_refreshes_; }

  // Problems with opts or the groups' options, each naming the option ("rank: must be > 0",
  // "group 'attn': option proj_type: ..."); empty when all is well.
  static std::vector<std::string> check_options(const std::vector<ParamGroup>& groups, const GaLoreOptions& opts);
  // The parameters opts.target selects among the groups' (2-D ones only).
  static std::set<std::string> select_projected(const std::vector<ParamGroup>& groups, const GaLoreOptions& opts);

  // Per-matrix settings after the group's overrides.
  struct MatrixSettings {
    int64_t rank, gap;
    double scale;
    ProjType proj_type;
  };
  MatrixSettings settings(const ParamGroup& group) const;
  // Whether this parameter's moments (of shape `moment_shape`) are 8-bit.
  bool uses_8bit(const std::string& name, const Shape& moment_shape) const;

 private:
  void refresh(const std::string& name, const Tensor& g, const Projector& p, int64_t step, int64_t gap);
  // The Adam step of x (the projected or full gradient) into a zero tensor: with the HF form
  // -sqrt(bc2)/bc1 * M / (sqrt(V) + eps), with the torch form -(M/bc1) / (sqrt(V/bc2) + eps).
  Tensor adam_delta(const std::string& name, const Tensor& x, StateMap& state, int64_t step,
                    kernels::AdamVariant variant) const;
  GaLoreOptions opts_;
  std::regex f32_re_;
  std::set<std::string> projected_;
  int64_t skipped_refreshes_ = 0;
  bool warned_ = false;
};

}  // namespace lathe::optim
