#include "autograd/gradcheck.h"

#include <cmath>
#include <sstream>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "core/storage.h"
#include "kernels/ops.h"

namespace lathe::autograd {

namespace {

using Vec = std::vector<double>;

std::string index_str(int64_t flat, const Shape& shape) {
  std::vector<int64_t> idx(shape.size());
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    idx[d] = shape[d] > 0 ? flat % shape[d] : 0;
    flat = shape[d] > 0 ? flat / shape[d] : 0;
  }
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < idx.size(); ++i) os << (i ? ", " : "") << idx[i];
  os << "]";
  return os.str();
}

// A fresh tensor laid out like `src` (same strides and offset, own zeroed storage on src's
// device) holding src's values, so f sees the caller's non-contiguous layouts. Everything
// stays on the device: no values pass through the host.
Tensor copy_with_layout(const Tensor& src) {
  auto st = std::make_shared<Storage>(src.storage()->nbytes(), src.device());
  Tensor whole = Tensor::from_storage(st, {static_cast<int64_t>(st->nbytes() / sizeof(double))}, DType::f64);
  whole.zero_();
  Tensor t = Tensor::from_storage(st, src.shape(), DType::f64, src.strides(), src.offset());
  t.copy_(src);
  return t;
}

// The one-element view of t at row-major position `flat` (a narrow in every dim).
Tensor element_view(const Tensor& t, int64_t flat) {
  Tensor e = t;
  for (int64_t d = t.dim() - 1; d >= 0; --d) {
    const int64_t n = t.size(d);
    e = e.narrow(d, n > 0 ? flat % n : 0, 1);
    flat = n > 0 ? flat / n : 0;
  }
  return e;
}

Vec normals(Generator& gen, int64_t n) {
  Vec v(static_cast<size_t>(n));
  for (double& x : v) x = gen.normal();
  return v;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

class Checker {
 public:
  Checker(std::function<Tensor(const std::vector<Tensor>&)> f, std::vector<Tensor> inputs, GradcheckOptions opts)
      : f_(std::move(f)), inputs_(std::move(inputs)), opts_(std::move(opts)) {
    LATHE_CHECK(opts_.check_input.empty() || opts_.check_input.size() == inputs_.size())
        << "gradcheck: check_input has " << opts_.check_input.size() << " entries for " << inputs_.size()
        << " inputs";
    for (size_t i = 0; i < inputs_.size(); ++i) {
      const Tensor& t = inputs_[i];
      LATHE_CHECK(t.defined()) << "gradcheck: input " << i << " is undefined";
      bool d = is_floating(t.dtype()) && (opts_.check_input.empty() || opts_.check_input[i]);
      diff_.push_back(d);
      if (!d) {
        base_.emplace_back();
        continue;
      }
      LATHE_CHECK(t.dtype() == DType::f64) << "gradcheck: input " << i << " has dtype " << dtype_name(t.dtype())
                                           << "; gradcheck needs f64 inputs (finite differences in f32 are noise)";
      for (int64_t k = 0; k < t.dim(); ++k)
        LATHE_CHECK(t.size(k) <= 1 || t.stride(k) != 0)
            << "gradcheck: input " << i << " (shape " << t.shape_str() << ") is an expanded view with stride 0 in dim "
            << k << "; pass the unexpanded tensor and expand inside f";
      base_.push_back(copy_with_layout(t));  // a private copy: the caller may change t later
    }
  }

  // Inputs for one evaluation: input `which` moved by s * dir (which < 0: none moved).
  // `dir` has the input's shape, or is a 0-d one with `element` >= 0 to move that single
  // element (row-major position). The move is an in-place add on the input's device.
  std::vector<Tensor> make_inputs(int64_t which, const Tensor& dir, int64_t element, double s,
                                  bool requires_grad) const {
    std::vector<Tensor> xs;
    for (size_t i = 0; i < inputs_.size(); ++i) {
      if (!diff_[i]) {
        xs.push_back(inputs_[i]);
        continue;
      }
      Tensor t = copy_with_layout(base_[i]);
      if (static_cast<int64_t>(i) == which) kernels::add_(element >= 0 ? element_view(t, element) : t, dir, s);
      if (requires_grad) t.set_requires_grad(true);
      xs.push_back(t);
    }
    return xs;
  }

  Vec eval(const std::vector<Tensor>& xs) {
    NoGradGuard ng;
    Tensor y = f_(xs);
    LATHE_CHECK(y.defined() && is_floating(y.dtype())) << "gradcheck: f must return a floating tensor";
    if (out_shape_set_) {
      LATHE_CHECK(y.shape() == out_shape_) << "gradcheck: f returned shape " << y.shape_str() << " after returning "
                                           << lathe::shape_str(out_shape_);
    } else {
      out_shape_ = y.shape();
      out_shape_set_ = true;
    }
    return y.to_vector<double>();
  }

  // Gradients of <u, f(x)> with respect to every checked input (zeros where none flowed).
  std::vector<Vec> vjp(const Vec& u) {
    EnableGradGuard eg;
    std::vector<Tensor> xs = make_inputs(-1, Tensor(), -1, 0.0, true);
    Tensor y = f_(xs);
    LATHE_CHECK(y.shape() == out_shape_) << "gradcheck: f returned shape " << y.shape_str() << " after returning "
                                         << lathe::shape_str(out_shape_);
    if (y.requires_grad()) backward(y, Tensor::from_vector(u, y.shape()).to(y.dtype()).to(y.device()));
    std::vector<Vec> gs(inputs_.size());
    for (size_t i = 0; i < inputs_.size(); ++i) {
      if (!diff_[i]) continue;
      Tensor g = xs[i].grad();
      gs[i] = g.defined() ? g.to_vector<double>() : Vec(static_cast<size_t>(inputs_[i].numel()), 0.0);
    }
    return gs;
  }

  void compare(double analytic, double numeric, const std::string& where) {
    double abs_err = std::fabs(analytic - numeric);
    double rel_err = abs_err / std::max(std::fabs(numeric), 1e-12);
    if (!std::isfinite(analytic) || !std::isfinite(numeric)) abs_err = rel_err = INFINITY;
    res_.max_abs_err = std::max(res_.max_abs_err, abs_err);
    if (abs_err > opts_.atol) res_.max_rel_err = std::max(res_.max_rel_err, rel_err);
    bool bad = !(abs_err <= opts_.atol + opts_.rtol * std::fabs(numeric));
    if (bad && res_.ok) {
      res_.ok = false;
      std::ostringstream os;
      os << "gradcheck failed: " << where << ": analytic " << analytic << " vs numeric " << numeric
         << " (abs err " << abs_err << ", atol " << opts_.atol << ", rtol " << opts_.rtol << ")";
      res_.message = os.str();
    }
  }

  GradcheckResult run() {
    Vec y0 = eval(make_inputs(-1, Tensor(), -1, 0.0, false));
    int64_t out_n = static_cast<int64_t>(y0.size());
    int64_t in_n = 0;
    for (size_t i = 0; i < inputs_.size(); ++i)
      if (diff_[i]) in_n += inputs_[i].numel();
    bool full = opts_.full_jacobian || out_n * in_n <= opts_.auto_full_max_entries;
    if (full) {
      full_jacobian(out_n);
    } else {
      projections();
    }
    if (res_.ok) {
      std::ostringstream os;
      os << "gradcheck ok (" << (full ? "full Jacobian" : "random projection") << "), max abs err "
         << res_.max_abs_err;
      res_.message = os.str();
    }
    return res_;
  }

 private:
  // (f(x + eps dir) - f(x - eps dir)) / (2 eps) for input i (see make_inputs for dir/element).
  Vec central(int64_t i, const Tensor& dir, int64_t element) {
    Vec yp = eval(make_inputs(i, dir, element, opts_.eps, false));
    Vec ym = eval(make_inputs(i, dir, element, -opts_.eps, false));
    Vec d(yp.size());
    for (size_t k = 0; k < yp.size(); ++k) d[k] = (yp[k] - ym[k]) / (2.0 * opts_.eps);
    return d;
  }

  void projections() {
    Generator gen(opts_.seed);
    int64_t out_n = shape_numel(out_shape_);
    for (int trial = 0; trial < opts_.trials; ++trial) {
      Vec u = normals(gen, out_n);
      std::vector<Vec> gs = vjp(u);
      for (size_t i = 0; i < inputs_.size(); ++i) {
        if (!diff_[i]) continue;
        Vec v = normals(gen, inputs_[i].numel());
        Tensor dir = Tensor::from_vector(v, inputs_[i].shape(), inputs_[i].device());
        double numeric = dot(u, central(static_cast<int64_t>(i), dir, -1));
        double analytic = dot(gs[i], v);
        std::ostringstream where;
        where << "input " << i << " (shape " << inputs_[i].shape_str() << "), trial " << trial
              << ", <u, J v> with random u, v";
        compare(analytic, numeric, where.str());
      }
    }
  }

  void full_jacobian(int64_t out_n) {
    // rows[k][i] = d out_k / d input_i (one backward per output element)
    std::vector<std::vector<Vec>> rows;
    for (int64_t k = 0; k < out_n; ++k) {
      Vec u(static_cast<size_t>(out_n), 0.0);
      u[k] = 1.0;
      rows.push_back(vjp(u));
    }
    for (size_t i = 0; i < inputs_.size(); ++i) {
      if (!diff_[i]) continue;
      const int64_t n = inputs_[i].numel();
      const Tensor one = Tensor::scalar(1.0, DType::f64, inputs_[i].device());
      for (int64_t j = 0; j < n; ++j) {
        Vec col = central(static_cast<int64_t>(i), one, j);
        for (int64_t k = 0; k < out_n; ++k) {
          std::ostringstream where;
          where << "input " << i << " (shape " << inputs_[i].shape_str() << ") element "
                << index_str(j, inputs_[i].shape()) << ", output element " << index_str(k, out_shape_);
          compare(rows[k][i][j], col[k], where.str());
        }
      }
    }
  }

  std::function<Tensor(const std::vector<Tensor>&)> f_;
  std::vector<Tensor> inputs_;
  GradcheckOptions opts_;
  std::vector<bool> diff_;
  std::vector<Tensor> base_;  // private device copies of the checked inputs
  Shape out_shape_;
  bool out_shape_set_ = false;
  GradcheckResult res_;
};

}  // namespace

GradcheckResult gradcheck(std::function<Tensor(const std::vector<Tensor>&)> f, std::vector<Tensor> inputs,
                          GradcheckOptions opts) {
  return Checker(std::move(f), std::move(inputs), std::move(opts)).run();
}

}  // namespace lathe::autograd
