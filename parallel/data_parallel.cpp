// Bucketed gradient averaging overlapped with backward; see data_parallel.h.
#include "parallel/data_parallel.h"

#include <chrono>
#include <cstring>
#include <set>
#include <sstream>

#include "autograd/hooks.h"
#include "core/memory.h"

namespace lathe::parallel {

namespace {

double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

}  // namespace

std::vector<std::vector<size_t>> plan_buckets(const std::vector<Tensor>& params, int64_t cap_bytes) {
  LATHE_CHECK(cap_bytes > 0) << "plan_buckets: the bucket capacity must be > 0 bytes, got " << cap_bytes;
  std::vector<std::vector<size_t>> out;
  int64_t bytes = 0;
  for (size_t k = params.size(); k-- > 0;) {
    const Tensor& p = params[k];
    const int64_t pb = static_cast<int64_t>(p.nbytes());
    bool close = false;
    if (!out.empty() && !out.back().empty()) {
      const Tensor& first = params[out.back().front()];
      close = first.dtype() != p.dtype() || first.device() != p.device() || bytes + pb > cap_bytes;
    }
    if (out.empty() || close) {
      out.emplace_back();
      bytes = 0;
    }
    out.back().push_back(k);
    bytes += pb;
  }
  return out;
}

BucketReducer::BucketReducer(std::vector<std::pair<std::string, Tensor>> params, std::shared_ptr<Communicator> comm,
                             BucketReducerOptions opts)
    : comm_(std::move(comm)), opts_(opts) {
  LATHE_CHECK(comm_ != nullptr) << "BucketReducer: no communicator";
  LATHE_CHECK(opts_.bucket_mb > 0) << "BucketReducer: bucket_mb must be > 0 (parallel.bucket_mb), got "
                                   << opts_.bucket_mb;
  std::set<std::string> names;
  std::vector<Tensor> tensors;
  for (auto& [name, p] : params) {
    LATHE_CHECK(p.defined()) << "BucketReducer: parameter " << name << " is undefined";
    LATHE_CHECK(p.requires_grad() && p.is_leaf())
        << "BucketReducer: parameter " << name << " (" << p.shape_str()
        << ") must be a leaf that requires grad (leave frozen parameters out)";
    LATHE_CHECK(is_floating(p.dtype())) << "BucketReducer: parameter " << name << " has dtype "
                                        << dtype_name(p.dtype()) << "; gradients need a floating dtype";
    LATHE_CHECK(names.insert(name).second) << "BucketReducer: parameter name " << name << " appears twice";
    Slot s;
    s.name = name;
    s.param = p;
    slots_.push_back(std::move(s));
    tensors.push_back(p);
  }
  const double cap = opts_.bucket_mb * 1048576.0;
  const int64_t cap_bytes = cap < 1 ? 1 : static_cast<int64_t>(cap);
  for (const auto& members : plan_buckets(tensors, cap_bytes)) {
    Bucket b;
    b.dtype = tensors[members.front()].dtype();
    b.device = tensors[members.front()].device();
    for (size_t pos = 0; pos < members.size(); ++pos) {
      const size_t i = members[pos];
      slots_[i].bucket = buckets_.size();
      slots_[i].pos = pos;
      b.params.push_back(i);
      b.offsets.push_back(b.numel);
      b.numel += tensors[i].numel();
    }
    buckets_.push_back(std::move(b));
  }
  state_.resize(buckets_.size());
  for (size_t b = 0; b < buckets_.size(); ++b) {
    allocate_flat(b);
    state_[b].pending = buckets_[b].params.size();
  }
  for (size_t i = 0; i < slots_.size(); ++i)
    slots_[i].hook_id = autograd::add_grad_ready_hook(slots_[i].param, [this, i](const Tensor& g) { on_grad_ready(i, g); });
}

void BucketReducer::allocate_flat(size_t b) {
  // The flat buffers hold a second copy of the gradients while they travel.
  MemCategoryGuard guard(MemCategory::gradients);
  state_[b].flat = Tensor::zeros({buckets_[b].numel + static_cast<int64_t>(buckets_[b].params.size())},
                                 buckets_[b].dtype, buckets_[b].device);
}

void BucketReducer::set_on_reduced(ReducedFn fn, int max_in_flight) {
  LATHE_CHECK(!armed_) << "BucketReducer::set_on_reduced: called during a synchronized backward";
  LATHE_CHECK(max_in_flight >= 1) << "BucketReducer::set_on_reduced: max_in_flight must be >= 1, got "
                                  << max_in_flight;
  on_reduced_ = std::move(fn);
  max_in_flight_ = max_in_flight;
  // Layer-wise mode allocates each buffer when its bucket's first gradient arrives.
  for (size_t b = 0; b < buckets_.size(); ++b) {
    if (on_reduced_)
      state_[b].flat = Tensor();
    else if (!state_[b].flat.defined())
      allocate_flat(b);
  }
}

void BucketReducer::hand_over(size_t b) {
  const Bucket& bk = buckets_[b];
  BucketState& st = state_[b];
  st.work.reset();
  const std::vector<double> present = st.flat.narrow(0, bk.numel, static_cast<int64_t>(bk.params.size()))
                                          .to(Device::cpu())
                                          .to(DType::f64)
                                          .to_vector<double>();
  for (size_t pos = 0; pos < bk.params.size(); ++pos) {
    if (!(present[pos] > 0)) continue;  // no rank had a gradient for it
    const Slot& s = slots_[bk.params[pos]];
    on_reduced_(s.name, s.param, st.flat.narrow(0, bk.offsets[pos], s.param.numel()).view(s.param.shape()));
    ++stats_.handed_over;
    if (!in_finish_) ++stats_.handed_over_early;
  }
  st.flat = Tensor();
}

BucketReducer::~BucketReducer() {
  for (auto& s : slots_)
    if (s.hook_id >= 0) autograd::remove_grad_ready_hook(s.param, s.hook_id);
  // Works still in flight (a backward that threw) are waited on by their own destructors,
  // before the flat buffers go.
}

void BucketReducer::arm(bool sync) {
  if (armed_) {
    LATHE_CHECK(next_launch_ == 0 && !sync_seen_any())
        << "BucketReducer::arm: the synchronized backward armed before was not finished (call finish() after the "
           "backward of the last micro-batch)";
  }
  armed_ = sync;
  if (sync) arm_time_ = now_s();
}

bool BucketReducer::sync_seen_any() const {
  for (const auto& s : slots_)
    if (s.ready) return true;
  return false;
}

void BucketReducer::on_grad_ready(size_t i, const Tensor& grad) {
  if (!armed_) return;
  Slot& s = slots_[i];
  LATHE_CHECK(!s.ready) << "data parallel: the gradient of " << s.name
                        << " became ready twice in one synchronized backward (a second backward after arm(true) "
                           "needs finish() in between)";
  s.ready = true;
  BucketState& st = state_[s.bucket];
  --st.pending;
  if (!opts_.overlap) return;  // finish() packs and reduces everything
  pack(i, grad);
  if (st.pending == 0 && s.bucket == next_launch_) {
    launch_ready_prefix();
  } else {
    drive_progress();
  }
}

void BucketReducer::pack(size_t i, const Tensor& grad) {
  Slot& s = slots_[i];
  const Bucket& b = buckets_[s.bucket];
  if (!state_[s.bucket].flat.defined()) allocate_flat(s.bucket);
  const Tensor& flat = state_[s.bucket].flat;
  Tensor dst = flat.narrow(0, b.offsets[s.pos], s.param.numel());
  Tensor flag = flat.narrow(0, b.numel + static_cast<int64_t>(s.pos), 1);
  if (grad.defined()) {
    LATHE_CHECK(grad.shape() == s.param.shape())
        << "data parallel: the gradient of " << s.name << " has shape " << grad.shape_str() << " but the parameter "
        << s.param.shape_str();
    dst.view(s.param.shape()).copy_(grad);
    flag.fill_(1.0);
  } else {
    dst.zero_();
    flag.fill_(0.0);
  }
  s.packed = true;
  // Layer-wise mode: the copy in the bucket is the one that counts from now on.
  if (on_reduced_) s.param.set_grad(Tensor());
}

void BucketReducer::launch_ready_prefix() {
  while (next_launch_ < buckets_.size() && state_[next_launch_].pending == 0) {
    launch(next_launch_++);
    ++stats_.buckets_early;
  }
  drive_progress();
}

void BucketReducer::launch(size_t b) {
  // Layer-wise mode: make room first, so that at most max_in_flight_ buffers travel.
  while (on_reduced_ && b - first_open_ >= static_cast<size_t>(max_in_flight_)) {
    BucketState& old = state_[first_open_];
    const double tw = now_s();
    if (!old.done) old.work->wait();
    (in_finish_ ? stats_.wait_s : stats_.room_wait_s) += now_s() - tw;
    old.done = true;
    hand_over(first_open_++);
  }
  BucketState& st = state_[b];
  for (size_t i : buckets_[b].params)
    if (!slots_[i].packed) pack(i, slots_[i].param.grad());
  st.work = comm_->all_reduce_async(st.flat, ReduceOp::avg);
  stats_.bytes += static_cast<int64_t>(st.flat.nbytes());
}

void BucketReducer::drive_progress() {
  // MPI_Test on the oldest bucket in flight moves every pending operation along.
  while (first_open_ < next_launch_) {
    BucketState& st = state_[first_open_];
    if (!st.done && !st.work->test()) return;
    st.done = true;
    if (on_reduced_) hand_over(first_open_);
    ++first_open_;
  }
}

void BucketReducer::finish() {
  if (!armed_) return;
  in_finish_ = true;
  const double t0 = now_s();
  stats_.backward_s += t0 - arm_time_;
  drive_progress();
  stats_.buckets_done_early += static_cast<int64_t>(first_open_);
  // Buckets not started during backward: a member got no gradient in this backward (its
  // accumulated .grad, or zeros, goes in), or overlap is off.
  for (size_t b = next_launch_; b < buckets_.size(); ++b) state_[b].pending = 0;
  while (next_launch_ < buckets_.size()) {
    launch(next_launch_++);
    ++stats_.buckets_late;
  }
  const double tw = now_s();
  for (auto& st : state_) {
    if (!st.done) st.work->wait();
    st.done = true;
  }
  stats_.wait_s += now_s() - tw;
  if (on_reduced_) {
    // Whatever was not handed over during backward goes now, in bucket order.
    while (first_open_ < buckets_.size()) hand_over(first_open_++);
  } else {
    for (const auto& s : slots_) {
      const Bucket& b = buckets_[s.bucket];
      const Tensor& flat = state_[s.bucket].flat;
      const double present = flat.narrow(0, b.numel + static_cast<int64_t>(s.pos), 1).item();
      if (present > 0) {
        Tensor g = s.param.grad();
        if (!g.defined()) {
          MemCategoryGuard guard(MemCategory::gradients);
          g = Tensor::empty(s.param.shape(), s.param.dtype(), s.param.device());
          s.param.set_grad(g);
        }
        g.copy_(flat.narrow(0, b.offsets[s.pos], s.param.numel()).view(s.param.shape()));
      }
    }
  }
  for (auto& s : slots_) s.ready = s.packed = false;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    state_[b].work.reset();
    state_[b].done = false;
    state_[b].pending = buckets_[b].params.size();
  }
  next_launch_ = first_open_ = 0;
  armed_ = false;
  in_finish_ = false;
  ++stats_.syncs;
  stats_.finish_s += now_s() - t0;
}

void broadcast_tensors(const std::vector<Tensor>& tensors, Communicator& comm, int root) {
  if (comm.size() <= 1) return;
  for (const Tensor& t : tensors) comm.broadcast(t, root);
}

uint64_t tensor_checksum(const Tensor& t) {
  // FNV-1a over 64-bit words, finished with the splitmix64 mixer so that every input bit
  // reaches every output bit.
  constexpr uint64_t kPrime = 0x100000001b3ULL;
  uint64_t h = 0xcbf29ce484222325ULL;
  auto mix = [&](uint64_t w) { h = (h ^ w) * kPrime; };
  mix(static_cast<uint64_t>(t.dtype()));
  for (int64_t d : t.shape()) mix(static_cast<uint64_t>(d));
  Tensor c = t.to(Device::cpu()).contiguous();
  const auto* bytes = static_cast<const unsigned char*>(c.raw_data());
  const size_t n = c.nbytes();
  size_t k = 0;
  for (; k + 8 <= n; k += 8) {
    uint64_t w;
    std::memcpy(&w, bytes + k, 8);
    mix(w);
  }
  for (; k < n; ++k) mix(bytes[k]);
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return h;
}

void check_replicas_identical(const std::vector<std::pair<std::string, Tensor>>& named, Communicator& comm,
                              const std::string& what) {
  if (comm.size() <= 1 || named.empty()) return;
  // Per tensor (hi, lo, -hi, -lo) of the checksum's two 32-bit halves: one all-reduce(max)
  // gives every rank the max and the min of each half.
  const int64_t n = static_cast<int64_t>(named.size());
  Tensor buf = Tensor::empty({4 * n}, DType::i64);
  int64_t* v = buf.data<int64_t>();
  std::vector<uint64_t> sums(named.size());
  for (int64_t i = 0; i < n; ++i) {
    sums[i] = tensor_checksum(named[i].second);
    const int64_t hi = static_cast<int64_t>(sums[i] >> 32), lo = static_cast<int64_t>(sums[i] & 0xffffffffULL);
    v[4 * i] = hi;
    v[4 * i + 1] = lo;
    v[4 * i + 2] = -hi;
    v[4 * i + 3] = -lo;
  }
  comm.all_reduce(buf, ReduceOp::max);
  int64_t differing = 0;
  int64_t first = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (v[4 * i] != -v[4 * i + 2] || v[4 * i + 1] != -v[4 * i + 3]) {
      if (first < 0) first = i;
      ++differing;
    }
  }
  if (first < 0) return;
  std::ostringstream hex;
  hex << std::hex << sums[first];
  LATHE_FAIL() << "lathe: rank " << comm.rank() << ": " << what << " differ between ranks, first at "
               << named[first].first << " (" << named[first].second.shape_str() << ", checksum here 0x" << hex.str()
               << "); " << differing << " of " << n << " tensors differ";
}

}  // namespace lathe::parallel
