// MpiCommunicator under mpirun (any size >= 1; ctest runs -np 2 and -np 3). Every
// expected value is computed locally from what each rank contributes.
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "tests/common/test_helpers.h"
#include "parallel/mpi_communicator.h"

using lathe::DType;
using lathe::Shape;
using lathe::Tensor;
using lathe::parallel::Communicator;
using lathe::parallel::ReduceOp;
using lathe::parallel::WorkPtr;

namespace {

std::shared_ptr<Communicator> comm() { return lathe::parallel::world(); }

// Rank r's contribution at flat index i. Signs alternate with i, so max and min come
// from different ranks at different indices; u8 gets a non-negative pattern instead.
double val(int r, int64_t i, DType dt) {
  if (dt == DType::u8) return static_cast<double>((i * 5 + r * 3) % 13);
  const double base = (r + 1) * static_cast<double>((i * 7) % 11 - 5);
  return lathe::is_floating(dt) ? base * 0.25 : base;
}

Tensor filled(int r, const Shape& shape, DType dt, int64_t offset = 0) {
  std::vector<double> v(static_cast<size_t>(lathe::shape_numel(shape)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = val(r, offset + static_cast<int64_t>(i), dt);
  return Tensor::from_vector(v, shape).to(dt);
}

// The reduction of all ranks' val(., i), rounded the way the communicator computes it:
// bf16 reduces in f32 and rounds once at the end.
double expected_reduce(ReduceOp op, int64_t i, DType dt, int size) {
  double acc = val(0, i, dt);
  for (int r = 1; r < size; ++r) {
    const double x = val(r, i, dt);
    if (op == ReduceOp::sum || op == ReduceOp::avg) acc += x;
    if (op == ReduceOp::max) acc = std::max(acc, x);
    if (op == ReduceOp::min) acc = std::min(acc, x);
  }
  if (op == ReduceOp::avg) {
    if (dt == DType::f64) return acc / size;
    const float q = static_cast<float>(acc) / static_cast<float>(size);
    if (dt == DType::bf16) return lathe::bf16_to_float(lathe::float_to_bf16(q));
    return q;
  }
  if (dt == DType::u8) return static_cast<double>(static_cast<uint8_t>(acc));
  return acc;
}

using lathe::test::error_of;

const ReduceOp kOps[] = {ReduceOp::sum, ReduceOp::avg, ReduceOp::max, ReduceOp::min};
const DType kDtypes[] = {DType::f64, DType::f32, DType::bf16, DType::i64, DType::i32, DType::u8};

}  // namespace

TEST(Comm, WorldMatchesLauncher) {
  auto c = comm();
  EXPECT_EQ(c->backend(), "mpi");
  int world_size = 0, world_rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  EXPECT_EQ(c->size(), world_size);
  EXPECT_EQ(c->rank(), world_rank);
  EXPECT_EQ(lathe::parallel::mpi_thread_level(), MPI_THREAD_MULTIPLE);
}

TEST(Comm, AllReduceEveryOpAndDtype) {
  auto c = comm();
  const int64_t n = 13;
  for (DType dt : kDtypes) {
    for (ReduceOp op : kOps) {
      if (op == ReduceOp::avg && !lathe::is_floating(dt)) continue;
      Tensor t = filled(c->rank(), {n}, dt);
      c->all_reduce(t, op);
      EXPECT_EQ(t.dtype(), dt);
      std::vector<double> got = t.to_vector<double>();
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(got[i], expected_reduce(op, i, dt, c->size()))
            << lathe::dtype_name(dt) << " " << lathe::parallel::reduce_op_name(op) << " at " << i;
    }
  }
}

TEST(Comm, AllReduceWritesThroughNonContiguousView) {
  auto c = comm();
  // The view is columns 1..4 of a [3, 6] base, transposed: [4, 3] with strides (1, 6).
  Tensor base = Tensor::full({3, 6}, -100.0, DType::f32);
  Tensor view = base.narrow(1, 1, 4).transpose(0, 1);
  ASSERT_FALSE(view.is_contiguous());
  view.copy_(filled(c->rank(), {4, 3}, DType::f32));
  c->all_reduce(view, ReduceOp::sum);
  for (int64_t a = 0; a < 4; ++a)
    for (int64_t b = 0; b < 3; ++b) ASSERT_EQ(view.at({a, b}), expected_reduce(ReduceOp::sum, a * 3 + b, DType::f32, c->size()));
  for (int64_t row = 0; row < 3; ++row) {  // columns outside the view are untouched
    EXPECT_EQ(base.at({row, 0}), -100.0);
    EXPECT_EQ(base.at({row, 5}), -100.0);
  }
}

TEST(Comm, LargeAllReduce) {
  auto c = comm();
  const int64_t n = (1 << 20) + 3;  // big enough for the segmented algorithms
  Tensor t = Tensor::arange(0, static_cast<double>(n), 1, DType::f32);
  for (int64_t i = 0; i < n; i += 1) t.data<float>()[i] = static_cast<float>((i % 1000) * (c->rank() + 1));
  c->all_reduce(t, ReduceOp::sum);
  const double ranks_sum = c->size() * (c->size() + 1) / 2.0;
  const float* p = t.data<float>();
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(p[i], static_cast<float>((i % 1000) * ranks_sum)) << i;
}

TEST(Comm, ReduceScatter) {
  auto c = comm();
  const int s = c->size();
  for (DType dt : {DType::f32, DType::bf16, DType::i64}) {
    for (ReduceOp op : kOps) {
      if (op == ReduceOp::avg && !lathe::is_floating(dt)) continue;
      Tensor in = filled(c->rank(), {s * 3, 2}, dt);
      Tensor out = Tensor::full({3, 2}, -1.0, dt);
      c->reduce_scatter(in, out, op);
      std::vector<double> got = out.to_vector<double>();
      for (int64_t i = 0; i < 6; ++i)
        ASSERT_EQ(got[i], expected_reduce(op, c->rank() * 6 + i, dt, s))
            << lathe::dtype_name(dt) << " " << lathe::parallel::reduce_op_name(op) << " at " << i;
      // The input is not modified.
      EXPECT_EQ(in.to_vector<double>(), filled(c->rank(), {s * 3, 2}, dt).to_vector<double>());
    }
  }
}

TEST(Comm, AllGather) {
  auto c = comm();
  const int s = c->size();
  for (DType dt : {DType::i64, DType::bf16, DType::u8, DType::f64}) {
    Tensor in = filled(c->rank(), {2, 3}, dt);
    Tensor out = Tensor::zeros({s * 2, 3}, dt);
    c->all_gather(in, out);
    std::vector<double> got = out.to_vector<double>();
    for (int r = 0; r < s; ++r)
      for (int64_t i = 0; i < 6; ++i) ASSERT_EQ(got[r * 6 + i], Tensor::scalar(val(r, i, dt), dt).item()) << r << " " << i;
  }
}

TEST(Comm, AllGatherInPlaceSlice) {
  // in is this rank's slice of out: the overlapping buffers must be staged.
  auto c = comm();
  const int s = c->size();
  Tensor out = Tensor::zeros({s * 2, 3}, DType::f32);
  Tensor in = out.narrow(0, c->rank() * 2, 2);
  in.copy_(filled(c->rank(), {2, 3}, DType::f32));
  c->all_gather(in, out);
  std::vector<float> got = out.to_vector<float>();
  for (int r = 0; r < s; ++r)
    for (int64_t i = 0; i < 6; ++i) ASSERT_EQ(got[r * 6 + i], val(r, i, DType::f32));
}

TEST(Comm, AllToAll) {
  auto c = comm();
  const int s = c->size(), me = c->rank();
  // Block j of rank r's input holds 1000 r + 10 j + i: after the exchange, block j of
  // this rank's output must hold 1000 j + 10 me + i.
  Tensor in = Tensor::empty({s * 2, 3}, DType::f32);
  float* p = in.data<float>();
  for (int j = 0; j < s; ++j)
    for (int i = 0; i < 6; ++i) p[j * 6 + i] = static_cast<float>(1000 * me + 10 * j + i);
  Tensor out = Tensor::zeros({s, 6}, DType::f32);  // another shape, same numel
  c->all_to_all(in, out);
  for (int j = 0; j < s; ++j)
    for (int i = 0; i < 6; ++i) ASSERT_EQ(out.at({j, i}), 1000 * j + 10 * me + i) << j << " " << i;
}

TEST(Comm, BroadcastFromRankOne) {
  auto c = comm();
  const int root = c->size() > 1 ? 1 : 0;
  for (DType dt : {DType::f64, DType::bf16, DType::i32}) {
    Tensor t = c->rank() == root ? filled(root, {5, 2}, dt) : Tensor::full({5, 2}, -7.0, dt);
    Tensor view = t.transpose(0, 1);  // non-contiguous: staged and written back
    c->broadcast(view, root);
    EXPECT_EQ(t.to_vector<double>(), filled(root, {5, 2}, dt).to_vector<double>()) << lathe::dtype_name(dt);
  }
}

TEST(Comm, SendRecvRing) {
  auto c = comm();
  const int s = c->size(), me = c->rank();
  const int next = (me + 1) % s, prev = (me + s - 1) % s;
  // Two messages per hop with different tags, received in the opposite order.
  Tensor a = filled(me, {5}, DType::f32), b = filled(me, {3}, DType::i64, 100);
  WorkPtr sa = c->send_async(a, next, 1);
  WorkPtr sb = c->send_async(b, next, 2);
  Tensor rb = Tensor::zeros({3}, DType::i64), ra = Tensor::zeros({5}, DType::f32);
  c->recv(rb, prev, 2);
  c->recv(ra, prev, 1);
  sa->wait();
  sb->wait();
  EXPECT_EQ(ra.to_vector<double>(), filled(prev, {5}, DType::f32).to_vector<double>());
  EXPECT_EQ(rb.to_vector<double>(), filled(prev, {3}, DType::i64, 100).to_vector<double>());
}

TEST(Comm, RecvSizeMismatchThrows) {
  auto c = comm();
  if (c->size() < 2) GTEST_SKIP() << "needs two ranks";
  if (c->rank() == 0) {
    c->send(Tensor::ones({4}), 1, 9);  // shorter than the receive buffer
    c->send(Tensor::ones({6}), 1, 10);  // longer than the receive buffer
  } else if (c->rank() == 1) {
    std::string e1 = error_of([&] { c->recv(Tensor::zeros({5}), 0, 9); });
    EXPECT_NE(e1.find("lathe: rank 1: recv"), std::string::npos) << e1;
    EXPECT_NE(e1.find("the message has 4 elements but the buffer holds 5"), std::string::npos) << e1;
    std::string e2 = error_of([&] { c->recv(Tensor::zeros({5}), 0, 10); });
    EXPECT_NE(e2.find("lathe: rank 1: recv"), std::string::npos) << e2;
    EXPECT_NE(e2.find("from rank 0 (tag 10): MPI error"), std::string::npos) << e2;
  }
  c->barrier();
}

TEST(Comm, AsyncOpsOverlap) {
  auto c = comm();
  const int s = c->size();
  Tensor a = filled(c->rank(), {7}, DType::f64);
  Tensor g_in = filled(c->rank(), {4}, DType::f32), g_out = Tensor::zeros({s * 4}, DType::f32);
  Tensor b = c->rank() == 0 ? filled(0, {3}, DType::i32) : Tensor::zeros({3}, DType::i32);
  WorkPtr w1 = c->all_reduce_async(a, ReduceOp::max);
  WorkPtr w2 = c->all_gather_async(g_in, g_out);
  WorkPtr w3 = c->broadcast_async(b, 0);
  while (!w3->test()) std::this_thread::yield();  // poll one, wait the others in reverse
  w2->wait();
  w1->wait();
  EXPECT_TRUE(w1->test());
  EXPECT_NE(w1->describe().find("all_reduce #"), std::string::npos);
  for (int64_t i = 0; i < 7; ++i) ASSERT_EQ(a.at({i}), expected_reduce(ReduceOp::max, i, DType::f64, s));
  for (int r = 0; r < s; ++r)
    for (int64_t i = 0; i < 4; ++i) ASSERT_EQ(g_out.at({r * 4 + i}), val(r, i, DType::f32));
  EXPECT_EQ(b.to_vector<double>(), filled(0, {3}, DType::i32).to_vector<double>());
}

TEST(Comm, WaitFromAnotherThread) {
  auto c = comm();
  Tensor a = filled(c->rank(), {5}, DType::f32), b = filled(c->rank(), {5}, DType::i32);
  WorkPtr wa = c->all_reduce_async(a, ReduceOp::sum);
  WorkPtr wb = c->all_reduce_async(b, ReduceOp::min);
  std::thread other([&] { wa->wait(); });
  wb->wait();
  wa->wait();  // concurrent with the other thread's wait
  other.join();
  for (int64_t i = 0; i < 5; ++i) {
    ASSERT_EQ(a.at({i}), expected_reduce(ReduceOp::sum, i, DType::f32, c->size()));
    ASSERT_EQ(b.at({i}), expected_reduce(ReduceOp::min, i, DType::i32, c->size()));
  }
}

TEST(Comm, DroppedWorkStillCompletes) {
  auto c = comm();
  Tensor t = filled(c->rank(), {6}, DType::f32);
  { WorkPtr w = c->all_reduce_async(t, ReduceOp::sum); }  // the handle's destructor waits
  for (int64_t i = 0; i < 6; ++i) ASSERT_EQ(t.at({i}), expected_reduce(ReduceOp::sum, i, DType::f32, c->size()));
}

TEST(Comm, LocalMismatchesThrowNamingOpAndShapes) {
  auto c = comm();
  const int s = c->size();
  std::string e = error_of([&] { c->all_gather(Tensor::zeros({4}), Tensor::zeros({4 * s + 1})); });
  EXPECT_NE(e.find("all_gather: out [" + std::to_string(4 * s + 1) + "]"), std::string::npos) << e;
  EXPECT_NE(e.find("(in [4])"), std::string::npos) << e;
  e = error_of([&] { c->reduce_scatter(Tensor::zeros({3, s}), Tensor::zeros({2})); });
  EXPECT_NE(e.find("reduce_scatter: in [3, " + std::to_string(s) + "]"), std::string::npos) << e;
  e = error_of([&] { c->all_to_all(Tensor::zeros({s, 2}), Tensor::zeros({s, 3})); });
  EXPECT_NE(e.find("all_to_all: in [" + std::to_string(s) + ", 2] and out"), std::string::npos) << e;
  if (s > 1) {
    e = error_of([&] { c->all_to_all(Tensor::zeros({s + 1, s}), Tensor::zeros({s, s + 1})); });
    EXPECT_NE(e.find("must split along dim 0"), std::string::npos) << e;
  }
  e = error_of([&] { c->all_gather(Tensor::zeros({2}, DType::f32), Tensor::zeros({2 * s}, DType::f64)); });
  EXPECT_NE(e.find("all_gather: in is f32 [2] but out is f64"), std::string::npos) << e;
  e = error_of([&] { c->all_reduce(Tensor::zeros({2}, DType::i64), ReduceOp::avg); });
  EXPECT_NE(e.find("all_reduce: ReduceOp::avg needs a floating dtype, got i64"), std::string::npos) << e;
  e = error_of([&] { c->broadcast(Tensor::zeros({2}), s); });
  EXPECT_NE(e.find("broadcast: root " + std::to_string(s) + " is not a rank"), std::string::npos) << e;
  e = error_of([&] { c->send(Tensor::zeros({2}), -1, 0); });
  EXPECT_NE(e.find("send: peer rank -1"), std::string::npos) << e;
  e = error_of([&] { c->recv(Tensor::zeros({2}), 0, -3); });
  EXPECT_NE(e.find("recv: tag -3 is outside"), std::string::npos) << e;
  e = error_of([&] { c->all_reduce(Tensor()); });
  EXPECT_NE(e.find("all_reduce: t is an undefined tensor"), std::string::npos) << e;
  // Nothing was started: the ranks are still in step.
  Tensor t = filled(c->rank(), {3}, DType::f32);
  c->all_reduce(t, ReduceOp::min);
  for (int64_t i = 0; i < 3; ++i) ASSERT_EQ(t.at({i}), expected_reduce(ReduceOp::min, i, DType::f32, s));
}

TEST(Comm, DebugCheckCatchesCrossRankMismatch) {
  auto c = comm();
  if (c->size() < 2) GTEST_SKIP() << "needs two ranks";
  c->set_debug_checks(true);
  Tensor t = Tensor::ones({c->rank() == 0 ? 4 : 5});
  std::string e = error_of([&] { c->all_reduce(t); });
  EXPECT_NE(e.find("lathe: rank " + std::to_string(c->rank()) + ": all_reduce #"), std::string::npos) << e;
  EXPECT_NE(e.find("ranks disagree on the numel: values range over [4, 5]"), std::string::npos) << e;
  // Matching calls pass the check and still reduce.
  Tensor u = filled(c->rank(), {4}, DType::f32);
  c->all_reduce(u, ReduceOp::sum);
  c->set_debug_checks(false);
  for (int64_t i = 0; i < 4; ++i) ASSERT_EQ(u.at({i}), expected_reduce(ReduceOp::sum, i, DType::f32, c->size()));
}

TEST(Comm, RecvTimeoutThrowsInThrowMode) {
  auto c = comm();
  if (c->size() < 2) GTEST_SKIP() << "needs two ranks";
  if (c->rank() == 0) {
    c->set_timeout(0.5);
    c->set_timeout_action(lathe::parallel::TimeoutAction::throw_error);
    const auto t0 = std::chrono::steady_clock::now();
    std::string e = error_of([&] { c->recv(Tensor::zeros({2}), 1, 77); });  // rank 1 never sends
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    c->set_timeout(30);
    c->set_timeout_action(lathe::parallel::TimeoutAction::abort);
    EXPECT_NE(e.find("lathe: rank 0: recv #"), std::string::npos) << e;
    EXPECT_NE(e.find("from rank 1 (tag 77) did not complete within 0.5 s (a peer rank may have died)"),
              std::string::npos)
        << e;
    EXPECT_GE(took, 0.5);
    EXPECT_LT(took, 5.0);
  }
  c->barrier();  // the cancelled receive left the communicator usable
  Tensor t = filled(c->rank(), {2}, DType::f32);
  c->all_reduce(t);
  for (int64_t i = 0; i < 2; ++i) ASSERT_EQ(t.at({i}), expected_reduce(ReduceOp::sum, i, DType::f32, c->size()));
}

TEST(Comm, CollectiveTimeoutInThrowModeRetiresTheCommunicator) {
  auto c = comm();
  if (c->size() < 2) GTEST_SKIP() << "needs two ranks";
  auto sub = c->split(0, 0);  // a separate communicator to sacrifice (its ops count from #1)
  Tensor t = Tensor::ones({3});
  if (c->rank() == 0) {
    sub->set_timeout(0.3);
    sub->set_timeout_action(lathe::parallel::TimeoutAction::throw_error);
    std::string e = error_of([&] { sub->all_reduce(t); });  // the others join too late
    EXPECT_NE(e.find("lathe: rank 0: all_reduce #1 did not complete within 0.3 s"), std::string::npos) << e;
    e = error_of([&] { sub->barrier(); });
    EXPECT_NE(e.find("barrier #2: this communicator is unusable since all_reduce #1 timed out"), std::string::npos)
        << e;
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(600));
    sub->all_reduce(t);  // completes: rank 0's contribution was posted before it gave up
    EXPECT_EQ(t.at({0}), c->size());
  }
  c->barrier();  // the world communicator is unaffected
}

// The timeout probe: rank 0's collective on a sacrificial communicator times out while every
// other rank waits in a receive on the world communicator. Waiting ranks are alive and answer
// the probe with the last collective they entered on that communicator (none: #0), so the
// message says they have not reached it, and names no rank as silent.
TEST(Comm, TimeoutProbeFindsRanksWaitingElsewhere) {
  auto c = comm();
  if (c->size() < 2) GTEST_SKIP() << "needs two ranks";
  auto sub = c->split(0, 0);
  Tensor t = Tensor::ones({3});
  Tensor token = Tensor::zeros({1});
  if (c->rank() == 0) {
    sub->set_timeout(0.5);
    sub->set_timeout_action(lathe::parallel::TimeoutAction::throw_error);
    std::string e = error_of([&] { sub->all_reduce(t); });
    std::string behind = "; rank(s) answering but not yet at collective #1: 1 (last entered #0)";
    for (int r = 2; r < c->size(); ++r) behind += ", " + std::to_string(r) + " (last entered #0)";
    EXPECT_NE(e.find("lathe: rank 0: all_reduce #1 did not complete within 0.5 s (a peer rank may have died)" + behind),
              std::string::npos)
        << e;
    EXPECT_EQ(e.find("not answering"), std::string::npos) << e;
    for (int r = 1; r < c->size(); ++r) c->send(token, r, 5);
  } else {
    c->recv(token, 0, 5);  // waits (answering probes) until rank 0 has given up
    sub->all_reduce(t);    // completes: rank 0's contribution was posted before it gave up
    EXPECT_EQ(t.at({0}), c->size());
  }
  c->barrier();
}

// Rank 1 is busy outside MPI (a hang) while rank 0's collective times out: the probe gets no
// answer from it and names it; any other rank waits in a world receive and answers.
TEST(Comm, TimeoutProbeNamesTheSilentRank) {
  auto c = comm();
  if (c->size() < 2) GTEST_SKIP() << "needs two ranks";
  auto sub = c->split(0, 0);
  Tensor t = Tensor::ones({3});
  Tensor token = Tensor::zeros({1});
  if (c->rank() == 0) {
    sub->set_timeout(0.3);
    sub->set_timeout_action(lathe::parallel::TimeoutAction::throw_error);
    const auto t0 = std::chrono::steady_clock::now();
    std::string e = error_of([&] { sub->all_reduce(t); });
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::string want = "all_reduce #1 did not complete within 0.3 s (a peer rank may have died); rank(s) not answering: 1";
    if (c->size() > 2) {
      want += "; rank(s) answering but not yet at collective #1: 2 (last entered #0)";
    }
    EXPECT_NE(e.find(want), std::string::npos) << e;
    EXPECT_LT(took, 1.5) << "the probe's grace period is bounded";
    for (int r = 2; r < c->size(); ++r) c->send(token, r, 6);
  } else if (c->rank() == 1) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2000));
    sub->all_reduce(t);
  } else {
    c->recv(token, 0, 6);
    sub->all_reduce(t);
  }
  c->barrier();
}

TEST(Comm, BarrierWaitsForTheLastRank) {
  auto c = comm();
  if (c->size() < 2) GTEST_SKIP() << "needs two ranks";
  c->barrier();
  const auto t0 = std::chrono::steady_clock::now();
  if (c->rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  c->barrier();
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GE(took, 0.25);
}

TEST(Comm, SplitByParity) {
  auto c = comm();
  const int s = c->size(), me = c->rank();
  // Same parity in one group, ordered by descending world rank (key = -rank).
  auto sub = c->split(me % 2, -me);
  ASSERT_NE(sub, nullptr);
  std::vector<int> members;
  for (int r = s - 1; r >= 0; --r)
    if (r % 2 == me % 2) members.push_back(r);
  EXPECT_EQ(sub->size(), static_cast<int>(members.size()));
  EXPECT_EQ(members[sub->rank()], me);
  Tensor t = Tensor::full({2}, me + 1.0, DType::i64);
  sub->all_reduce(t, ReduceOp::sum);
  double want = 0;
  for (int r : members) want += r + 1;
  EXPECT_EQ(t.at({1}), want);
  // A negative color takes part but gets no communicator.
  auto none = c->split(me == 0 ? -1 : 0, 0);
  EXPECT_EQ(none == nullptr, me == 0);
  if (none) {
    EXPECT_EQ(none->size(), s - 1);
  }
}
