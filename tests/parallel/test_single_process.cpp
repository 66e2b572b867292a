// SingleProcessCommunicator: the size-1 semantics and the same local checks as MPI.
#include <gtest/gtest.h>

#include <chrono>

#include "tests/common/test_helpers.h"
#include "parallel/single_process_communicator.h"

using lathe::DType;
using lathe::Tensor;
using lathe::parallel::ReduceOp;
using lathe::parallel::SingleProcessCommunicator;
using lathe::parallel::WorkPtr;

namespace {
using lathe::test::error_of;
Tensor seq(const lathe::Shape& shape, DType dt = DType::f32) {
  return Tensor::arange(0, static_cast<double>(lathe::shape_numel(shape)), 1, DType::f64).view(shape).to(dt) ;
}
}  // namespace

TEST(ParallelSingleProcess, Identity) {
  SingleProcessCommunicator c;
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.size(), 1);
  EXPECT_EQ(c.backend(), "single");
}

TEST(ParallelSingleProcess, AllReduceKeepsValues) {
  SingleProcessCommunicator c;
  for (DType dt : {DType::f64, DType::f32, DType::bf16, DType::i64, DType::u8}) {
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max, ReduceOp::min}) {
      Tensor t = seq({2, 3}, dt);
      if (op == ReduceOp::avg && !lathe::is_floating(dt)) {
        EXPECT_NE(error_of([&] { c.all_reduce(t, op); }).find("avg needs a floating dtype"), std::string::npos);
        continue;
      }
      c.all_reduce(t, op);
      EXPECT_EQ(t.to_vector<double>(), seq({2, 3}, dt).to_vector<double>());
    }
  }
}

TEST(ParallelSingleProcess, ChunkedCollectivesCopy) {
  SingleProcessCommunicator c;
  Tensor in = seq({2, 3}, DType::i32);
  Tensor out = Tensor::zeros({3, 2}, DType::i32);
  c.all_gather(in, out);
  EXPECT_EQ(out.to_vector<int32_t>(), in.to_vector<int32_t>());
  Tensor out2 = Tensor::zeros({6}, DType::i32);
  c.reduce_scatter(in.transpose(0, 1), out2, ReduceOp::max);  // row-major order of the view
  EXPECT_EQ(out2.to_vector<int32_t>(), in.transpose(0, 1).contiguous().to_vector<int32_t>());
  Tensor out3 = Tensor::zeros({2, 3}, DType::i32);
  c.all_to_all(in, out3);
  EXPECT_EQ(out3.to_vector<int32_t>(), in.to_vector<int32_t>());
  EXPECT_NE(error_of([&] { c.all_gather(in, Tensor::zeros({7}, DType::i32)); }).find("all_gather: out [7] has 7 elements"),
            std::string::npos);
  EXPECT_NE(error_of([&] { c.all_to_all(in, Tensor::zeros({6}, DType::f32)); }).find("all_to_all: in is i32"),
            std::string::npos);
}

TEST(ParallelSingleProcess, BroadcastRoot) {
  SingleProcessCommunicator c;
  Tensor t = seq({4});
  c.broadcast(t, 0);
  EXPECT_EQ(t.to_vector<float>(), seq({4}).to_vector<float>());
  EXPECT_NE(error_of([&] { c.broadcast(t, 1); }).find("broadcast: root 1 is not a rank of this communicator (size 1)"),
            std::string::npos);
}

TEST(ParallelSingleProcess, SendRecvToSelfByTag) {
  SingleProcessCommunicator c;
  Tensor r1 = Tensor::zeros({3}), r2 = Tensor::zeros({2}, DType::i64);
  WorkPtr w1 = c.recv_async(r1, 0, 1);
  EXPECT_FALSE(w1->test());
  Tensor a = seq({3});
  c.send(a, 0, 1);
  a.fill_(-1);  // the message was copied at send time
  c.send(seq({2}, DType::i64), 0, 2);
  c.recv(r2, 0, 2);
  w1->wait();
  EXPECT_EQ(r1.to_vector<float>(), seq({3}).to_vector<float>());
  EXPECT_EQ(r2.to_vector<int64_t>(), seq({2}, DType::i64).to_vector<int64_t>());
  EXPECT_NE(error_of([&] { c.send(a, 1, 0); }).find("send: peer rank 1"), std::string::npos);
  c.send(seq({4}), 0, 3);
  std::string e = error_of([&] { c.recv(Tensor::zeros({5}), 0, 3); });
  EXPECT_NE(e.find("the message is f32 [4] (4 elements) but the receive buffer is f32 [5]"), std::string::npos) << e;
}

TEST(ParallelSingleProcess, UnmatchedRecvTimesOut) {
  SingleProcessCommunicator c;
  c.set_timeout(0.2);
  const auto t0 = std::chrono::steady_clock::now();
  std::string e = error_of([&] { c.recv(Tensor::zeros({1}), 0, 5); });
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(e.find("lathe: rank 0: recv #1 from rank 0 (tag 5) did not complete within 0.2 s"), std::string::npos) << e;
  EXPECT_GE(took, 0.2);
  EXPECT_LT(took, 3.0);
  EXPECT_NE(error_of([&] { c.set_timeout(0); }).find("set_timeout: seconds must be > 0"), std::string::npos);
}

TEST(ParallelSingleProcess, SplitAndWorld) {
  SingleProcessCommunicator c;
  EXPECT_EQ(c.split(-1, 0), nullptr);
  auto sub = c.split(3, 0);
  ASSERT_NE(sub, nullptr);
  EXPECT_EQ(sub->size(), 1);
  if (lathe::parallel::launched_by_mpi()) GTEST_SKIP() << "started by an MPI launcher";
  auto w = lathe::parallel::world();
  EXPECT_EQ(w->backend(), "single");
  EXPECT_EQ(w, lathe::parallel::world());
}
