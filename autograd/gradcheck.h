// gradcheck: compares the gradients of the tape with central finite differences in f64.
//
// Random projection (default): for random u on the output and a random direction v on one
// input, <u, (f(x + eps v) - f(x - eps v)) / (2 eps)> must match <vjp(u), v>; repeated for
// `trials` draws of u and v, and for every floating input. Full Jacobian (tiny problems,
// or forced): every entry of d out / d input is compared, one backward per output element.
//
// A check passes when |analytic - numeric| <= atol + rtol * |numeric|.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace lathe::autograd {

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-6;
  double rtol = 1e-5;
  int trials = 3;
  bool full_jacobian = false;          // force the full Jacobian
  int64_t auto_full_max_entries = 64;  // full Jacobian when out.numel * (sum of input numels) <= this
  uint64_t seed = 1234;                // for u and v
  // Which inputs to differentiate (default: every floating input). Non-floating inputs
  // (ids, targets, indices) are always passed through unchanged.
  std::vector<bool> check_input;
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_err = 0.0;
  double max_rel_err = 0.0;
  std::string message;  // the first failure: input index, element / trial, both values
};

// Floating inputs must be f64 and must not have overlapping memory (no stride-0 expanded
// views; expand inside f instead). Non-contiguous layouts are kept: f sees inputs with
// the same strides as given. f must be deterministic (same output for the same inputs).
// Inputs may live on any device: each evaluation gets device copies of them, moved by an
// in-place add on that device (a whole random direction, or one element through a narrow
// view); only f's outputs and the gradients come back to the host to be compared.
GradcheckResult gradcheck(std::function<Tensor(const std::vector<Tensor>&)> f, std::vector<Tensor> inputs,
                          GradcheckOptions opts = {});

}  // namespace lathe::autograd
