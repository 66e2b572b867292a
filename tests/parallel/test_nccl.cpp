// The NCCL communicator on one process (a world of one rank, bootstrapped by the
// single-process host communicator): what one GPU can check. Without a GPU these skip,
// except the device-selection errors, which need none.
#include <gtest/gtest.h>

#include <cstdlib>

#include "kernels/device.h"
#include "parallel/nccl/nccl_communicator.h"
#include "parallel/single_process_communicator.h"

namespace lathe::parallel {
namespace {

bool have_gpu() { return kernels::cuda_device_count() > 0 && nccl_available(); }

TEST(NcclDevice, HostTensorsKeepTheHostCommunicator) {
  auto host = std::make_shared<SingleProcessCommunicator>();
  EXPECT_EQ(communicator_for(host, Device::cpu()).get(), host.get());
}

TEST(NcclDevice, MoreLocalRanksThanGpusIsAClearError) {
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3", 1);
  setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "64", 1);
  try {
    local_cuda_device();
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    const std::string m = e.what();
    if (kernels::cuda_device_count() == 0) {
      EXPECT_NE(m.find("no visible CUDA device"), std::string::npos) << m;
    } else {
      EXPECT_NE(m.find("one rank per GPU"), std::string::npos) << m;
    }
  }
  unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
  unsetenv("OMPI_COMM_WORLD_LOCAL_SIZE");
}

TEST(NcclDevice, CollectivesOnOneRank) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or no NCCL)";
  auto host = std::make_shared<SingleProcessCommunicator>();
  auto comm = communicator_for(host, Device::cuda(0));
  EXPECT_EQ(comm->size(), 1);
  EXPECT_NE(comm->backend().find("nccl"), std::string::npos);
  Tensor t = Tensor::from_vector<float>({1, -2, 3.5f, 4}, {4}, Device::cuda(0));
  comm->all_reduce(t, ReduceOp::avg);
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{1, -2, 3.5f, 4}));
  // A strided (transposed) bf16 tensor goes through a staged copy and comes back in place.
  Tensor m = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3}, Device::cuda(0)).to(DType::bf16).transpose(0, 1);
  comm->all_reduce(m, ReduceOp::sum);
  EXPECT_EQ(m.to_vector<float>(), (std::vector<float>{1, 4, 2, 5, 3, 6}));
  Tensor out = Tensor::zeros({4}, DType::f32, Device::cuda(0));
  comm->all_gather(t, out);
  EXPECT_EQ(out.to_vector<float>(), t.to_vector<float>());
  Tensor rs = Tensor::zeros({4}, DType::f32, Device::cuda(0));
  comm->reduce_scatter(t, rs, ReduceOp::max);
  EXPECT_EQ(rs.to_vector<float>(), t.to_vector<float>());
  auto w = comm->all_reduce_async(t, ReduceOp::sum);
  w->wait();
  EXPECT_TRUE(w->test());
  // Host tensors still go through the host communicator.
  Tensor h = Tensor::from_vector<float>({7}, {1});
  comm->all_reduce(h);
  EXPECT_EQ(h.item(), 7.0);
}

}  // namespace
}  // namespace lathe::parallel
