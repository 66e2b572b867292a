// Tensor blobs round-trip exactly; a size mismatch is an error naming the tensor.
#include <gtest/gtest.h>

#include "core/error.h"
#include "federated/wire.h"

namespace lathe::federated {
namespace {

TEST(Wire, BlobRoundTripIsExact) {
  Tensor t = Tensor::from_vector<float>({1.5f, -2.25f, 3e-20f, 7.0f, 0.1f, -0.0f}, {2, 3});
  TensorBlob b;
  to_blob("x.lora_B.weight", t.transpose(0, 1), &b);  // any layout: sent row-major
  EXPECT_EQ(payload_bytes(b), 24);
  Tensor back = from_blob(b);
  EXPECT_EQ(back.shape(), (Shape{3, 2}));
  EXPECT_EQ(back.to_vector<float>(), t.transpose(0, 1).contiguous().to_vector<float>());
  b.mutable_data()->pop_back();
  try {
    from_blob(b);
    FAIL();
  } catch (const lathe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("x.lora_B.weight"), std::string::npos);
  }
}

}  // namespace
}  // namespace lathe::federated
