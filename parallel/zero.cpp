// ZeRO-1 optimizer-state sharding; see zero.h.
#include "parallel/zero.h"

#include <algorithm>
#include <numeric>
#include <set>
#include <sstream>

#include "core/memory.h"

namespace lathe::parallel {

const char* zero_partition_name(ZeroPartition p) {
  return p == ZeroPartition::flat ? "flat" : "per-parameter";
}

int64_t ZeroLayout::owned_numel(int r) const {
  int64_t n = 0;
  for (const auto& pc : ranks.at(static_cast<size_t>(r))) n += pc.numel;
  return n;
}

std::string ZeroLayout::describe() const {
  int64_t total = 0;
  for (int r = 0; r < size; ++r) total += owned_numel(r);
  std::ostringstream s;
  s << "ZeRO-1 over " << size << " data-parallel rank(s), " << zero_partition_name(partition) << " partition of "
    << total << " elements (largest shard " << shard_numel << ")";
  return s.str();
}

ZeroLayout plan_zero_layout(const std::vector<int64_t>& numels, int size, ZeroPartition partition,
                            const std::vector<int64_t>& costs_in) {
  LATHE_CHECK(size >= 1) << "plan_zero_layout: the group size must be >= 1, got " << size;
  ZeroLayout L;
  L.partition = partition;
  L.size = size;
  L.ranks.resize(static_cast<size_t>(size));
  const int64_t total = std::accumulate(numels.begin(), numels.end(), int64_t{0});
  if (partition == ZeroPartition::flat) {
    // Rank r owns [r*S, (r+1)*S) of the concatenation; the last range is short (padding).
    const int64_t S = (total + size - 1) / size;
    L.shard_numel = S;
    int64_t start = 0;
    for (size_t i = 0; i < numels.size(); ++i) {
      const int64_t end = start + numels[i];
      for (int r = 0; r < size && S > 0; ++r) {
        const int64_t lo = std::max(start, r * S), hi = std::min(end, (r + 1) * S);
        if (lo < hi) L.ranks[static_cast<size_t>(r)].push_back(ZeroPiece{i, lo - start, hi - lo, lo - r * S});
      }
      start = end;
    }
    return L;
  }
  // Per parameter: the costliest first, each onto the least loaded rank (the lowest on a tie).
  LATHE_CHECK(costs_in.empty() || costs_in.size() == numels.size())
      << "plan_zero_layout: " << costs_in.size() << " costs for " << numels.size() << " parameters";
  const std::vector<int64_t>& costs = costs_in.empty() ? numels : costs_in;
  std::vector<size_t> order(numels.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return costs[a] > costs[b]; });
  std::vector<int64_t> load(static_cast<size_t>(size), 0), owned(static_cast<size_t>(size), 0);
  std::vector<int> owner(numels.size(), 0);
  for (size_t i : order) {
    const size_t r = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = static_cast<int>(r);
    load[r] += costs[i];
    owned[r] += numels[i];
  }
  for (size_t i = 0; i < numels.size(); ++i) {
    auto& mine = L.ranks[static_cast<size_t>(owner[i])];
    const int64_t packed = mine.empty() ? 0 : mine.back().packed + mine.back().numel;
    mine.push_back(ZeroPiece{i, 0, numels[i], packed});
  }
  L.shard_numel = *std::max_element(owned.begin(), owned.end());
  return L;
}

ZeroSharder::ZeroSharder(std::vector<std::pair<std::string, Tensor>> params, std::shared_ptr<Communicator> comm,
                         ZeroPartition partition, const std::vector<int64_t>& costs)
    : params_(std::move(params)), comm_(std::move(comm)) {
  LATHE_CHECK(comm_ != nullptr) << "ZeRO: no communicator";
  std::vector<int64_t> numels;
  std::set<std::string> names;
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& [name, p] = params_[i];
    LATHE_CHECK(p.defined() && p.requires_grad() && p.is_leaf())
        << "ZeRO: parameter " << name << " must be a leaf that requires grad (leave frozen parameters out)";
    LATHE_CHECK(p.is_contiguous()) << "ZeRO: parameter " << name << " (" << p.shape_str() << ") is not contiguous";
    LATHE_CHECK(names.insert(name).second) << "ZeRO: parameter name " << name << " appears twice";
    if (i == 0) {
      dtype_ = p.dtype();
      device_ = p.device();
    }
    LATHE_CHECK(p.dtype() == dtype_ && p.device() == device_)
        << "ZeRO: parameter " << name << " is " << dtype_name(p.dtype()) << " on " << p.device().str() << " but "
        << params_[0].first << " is " << dtype_name(dtype_) << " on " << device_.str()
        << "; the shards are exchanged in one buffer of one dtype and device";
    numels.push_back(p.numel());
  }
  layout_ = plan_zero_layout(numels, comm_->size(), partition, costs);
  for (const ZeroPiece& pc : layout_.ranks[static_cast<size_t>(comm_->rank())]) {
    const auto& [name, p] = params_[pc.param];
    if (partition == ZeroPartition::per_parameter) {
      pieces_.emplace_back(name, p);
    } else {
      // A leaf of its own over the parameter's storage: the optimizer updates it in place.
      Tensor v = p.detach().view({-1}).narrow(0, pc.offset, pc.numel);
      v.set_requires_grad(true);
      pieces_.emplace_back(name, v);
    }
  }
}

void ZeroSharder::reduce_scatter_gradients() {
  const int n = comm_->size();
  const int64_t S = layout_.shard_numel;
  Tensor present = Tensor::zeros({static_cast<int64_t>(params_.size())}, DType::f32);
  Tensor send;
  {
    MemCategoryGuard guard(MemCategory::gradients);
    send = Tensor::zeros({S * n}, dtype_, device_);
  }
  float* pr = present.data<float>();
  for (int r = 0; r < n; ++r)
    for (const ZeroPiece& pc : layout_.ranks[static_cast<size_t>(r)]) {
      const Tensor g = params_[pc.param].second.grad();
      if (!g.defined()) continue;
      pr[pc.param] = 1;
      send.narrow(0, r * S + pc.packed, pc.numel).copy_(g.reshape({-1}).narrow(0, pc.offset, pc.numel));
    }
  // The packed copy is the gradient from here on.
  for (auto& [name, p] : params_) p.set_grad(Tensor());
  if (n > 1) comm_->all_reduce(present, ReduceOp::max);
  {
    MemCategoryGuard guard(MemCategory::gradients);
    shard_grad_ = Tensor::empty({S}, dtype_, device_);
  }
  comm_->reduce_scatter(send, shard_grad_, ReduceOp::avg);
  send = Tensor();
  const auto& mine = layout_.ranks[static_cast<size_t>(comm_->rank())];
  for (size_t i = 0; i < mine.size(); ++i) {
    if (!(pr[mine[i].param] > 0)) continue;  // no rank had a gradient: skipped, as in one process
    const Tensor& piece = pieces_[i].second;
    piece.set_grad(shard_grad_.narrow(0, mine[i].packed, mine[i].numel).view(piece.shape()));
  }
}

void ZeroSharder::all_gather_parameters() {
  const int n = comm_->size();
  const int64_t S = layout_.shard_numel;
  for (auto& [name, piece] : pieces_) piece.set_grad(Tensor());
  shard_grad_ = Tensor();
  if (n == 1) return;  // the pieces are the parameters' storage already
  Tensor send, all;
  {
    MemCategoryGuard guard(MemCategory::other);
    send = Tensor::zeros({S}, dtype_, device_);
    all = Tensor::empty({S * n}, dtype_, device_);
  }
  const int me = comm_->rank();
  for (const ZeroPiece& pc : layout_.ranks[static_cast<size_t>(me)])
    send.narrow(0, pc.packed, pc.numel).copy_(params_[pc.param].second.detach().view({-1}).narrow(0, pc.offset, pc.numel));
  comm_->all_gather(send, all);
  for (int r = 0; r < n; ++r) {
    if (r == me) continue;
    for (const ZeroPiece& pc : layout_.ranks[static_cast<size_t>(r)])
      params_[pc.param].second.detach().view({-1}).narrow(0, pc.offset, pc.numel).copy_(
          all.narrow(0, r * S + pc.packed, pc.numel));
  }
}

void ZeroSharder::all_reduce_norm_sq(Tensor& sq) const {
  if (comm_->size() <= 1) return;
  // The norm is a device scalar; the sum travels as f64 on the host (one value).
  Tensor h = sq.to(Device::cpu()).to(DType::f64).contiguous();
  comm_->all_reduce(h, ReduceOp::sum);
  sq = h.to(sq.dtype()).to(sq.device());
}

}  // namespace lathe::parallel
