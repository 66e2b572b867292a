// Tensor views, copies, factories and dtype conversions.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/tensor.h"

using namespace lathe;

static Tensor iota(const Shape& s, DType dt = DType::f32) {
  return Tensor::arange(0, static_cast<double>(shape_numel(s)), 1, dt).reshape(s);
}

TEST(Tensor, FactoriesAndMetadata) {
  Tensor z = Tensor::zeros({2, 3});
  EXPECT_EQ(z.numel(), 6);
  EXPECT_EQ(z.dim(), 2);
  EXPECT_EQ(z.strides(), (Shape{3, 1}));
  EXPECT_TRUE(z.is_contiguous());
  for (double v : z.to_vector<double>()) EXPECT_EQ(v, 0.0);
  Tensor f = Tensor::full({2, 2}, 2.5, DType::f64);
  EXPECT_EQ(f.to_vector<double>(), (std::vector<double>{2.5, 2.5, 2.5, 2.5}));
  Tensor a = Tensor::arange(1, 2, 0.25, DType::f64);
  EXPECT_EQ(a.to_vector<double>(), (std::vector<double>{1, 1.25, 1.5, 1.75}));
  Tensor s = Tensor::scalar(3.0, DType::i64);
  EXPECT_EQ(s.dim(), 0);
  EXPECT_EQ(s.item(), 3.0);
  Tensor v = Tensor::from_vector<int32_t>({1, 2, 3, 4, 5, 6}, {3, 2});
  EXPECT_EQ(v.dtype(), DType::i32);
  EXPECT_EQ(v.at({2, 1}), 6.0);
  EXPECT_THROW(Tensor::from_vector<float>({1, 2, 3}, {2, 2}), Error);
}

TEST(Tensor, TransposePermuteContiguous) {
  Tensor x = iota({2, 3, 4});
  Tensor t = x.transpose(0, 2);  // [4, 3, 2]
  EXPECT_EQ(t.shape(), (Shape{4, 3, 2}));
  EXPECT_FALSE(t.is_contiguous());
  EXPECT_EQ(t.storage(), x.storage());
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 2; ++k) EXPECT_EQ(t.at({i, j, k}), x.at({k, j, i}));
  Tensor c = t.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_NE(c.storage(), x.storage());
  auto cv = c.to_vector<float>();
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 2; ++k) EXPECT_EQ(cv[(i * 3 + j) * 2 + k], x.at({k, j, i}));
  Tensor p = x.permute({1, 2, 0});
  EXPECT_EQ(p.shape(), (Shape{3, 4, 2}));
  EXPECT_EQ(p.at({2, 3, 1}), x.at({1, 2, 3}));
  EXPECT_THROW(x.permute({0, 0, 1}), Error);
}

TEST(Tensor, NarrowSliceSelectExpandSqueeze) {
  Tensor x = iota({4, 5});
  Tensor n = x.narrow(1, 1, 3);
  EXPECT_EQ(n.shape(), (Shape{4, 3}));
  EXPECT_EQ(n.at({2, 0}), 11.0);
  Tensor s = x.slice(0, 0, 4, 2);  // rows 0, 2
  EXPECT_EQ(s.shape(), (Shape{2, 5}));
  EXPECT_EQ(s.at({1, 4}), 14.0);
  Tensor r = x.select(0, -1);
  EXPECT_EQ(r.shape(), (Shape{5}));
  EXPECT_EQ(r.at({0}), 15.0);
  Tensor col = x.narrow(1, 2, 1);  // [4, 1]
  Tensor e = col.expand({4, 6});
  EXPECT_EQ(e.strides()[1], 0);
  EXPECT_EQ(e.at({3, 5}), 17.0);
  Tensor e3 = x.select(0, 1).expand({2, 5});
  EXPECT_EQ(e3.at({1, 3}), 8.0);
  EXPECT_THROW(x.expand({4, 6}), Error);
  Tensor u = x.unsqueeze(1);
  EXPECT_EQ(u.shape(), (Shape{4, 1, 5}));
  EXPECT_EQ(u.squeeze(1).shape(), (Shape{4, 5}));
  EXPECT_THROW(x.squeeze(0), Error);
  EXPECT_THROW(x.narrow(1, 3, 3), Error);
  EXPECT_THROW(x.select(0, 4), Error);
}

TEST(Tensor, ViewAndReshape) {
  Tensor x = iota({2, 3, 4});
  Tensor v = x.view({6, 4});
  EXPECT_EQ(v.storage(), x.storage());
  EXPECT_EQ(v.at({5, 3}), 23.0);
  EXPECT_EQ(x.view({-1}).shape(), (Shape{24}));
  EXPECT_THROW(x.view({5, -1}), Error);
  // A narrowed tensor can still be viewed when the merged dims stay contiguous.
  Tensor n = x.narrow(0, 1, 1);  // [1, 3, 4] at offset 12
  Tensor nv = n.view({12});
  EXPECT_EQ(nv.at({0}), 12.0);
  // A transposed tensor cannot merge its swapped dims without a copy ...
  Tensor t = x.transpose(1, 2);  // [2, 4, 3]
  EXPECT_THROW(t.view({2, 12}), Error);
  // ... but can split a dim and keep sharing storage.
  Tensor t2 = x.transpose(0, 1).view({3, 2, 2, 2});
  EXPECT_EQ(t2.storage(), x.storage());
  EXPECT_EQ(t2.at({2, 1, 1, 0}), x.at({1, 2, 2}));
  // reshape copies when it must, with the right values.
  Tensor r = t.reshape({2, 12});
  EXPECT_NE(r.storage(), x.storage());
  EXPECT_EQ(r.at({1, 5}), t.at({1, 1, 2}));
  EXPECT_EQ(x.flatten(1).shape(), (Shape{2, 12}));
}

TEST(Tensor, CopyFillAndBroadcastCopy) {
  Tensor x = Tensor::zeros({3, 4});
  Tensor row = Tensor::from_vector<float>({1, 2, 3, 4}, {4});
  x.copy_(row);  // broadcast over rows
  EXPECT_EQ(x.at({2, 3}), 4.0);
  x.narrow(1, 0, 2).fill_(-1);
  EXPECT_EQ(x.to_vector<float>(), (std::vector<float>{-1, -1, 3, 4, -1, -1, 3, 4, -1, -1, 3, 4}));
  // copy between overlapping views of the same storage
  Tensor y = iota({6});
  y.narrow(0, 1, 5).copy_(y.narrow(0, 0, 5));
  EXPECT_EQ(y.to_vector<float>(), (std::vector<float>{0, 0, 1, 2, 3, 4}));
  EXPECT_THROW(x.copy_(Tensor::zeros({5})), Error);
}

TEST(DType, Bf16RoundsToNearestEven) {
  // 1 + 2^-8 is exactly halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even -> 1.
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)).bits, 0x3f80);
  // 1 + 3*2^-8 is halfway between 1+2^-7 (odd) and 1+2^-6 (even) -> 1 + 2^-6.
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)).bits, 0x3f82);
  // just above the halfway point rounds up
  EXPECT_EQ(float_to_bf16(std::nextafter(1.0f + std::ldexp(1.0f, -8), 2.0f)).bits, 0x3f81);
  EXPECT_EQ(bf16_to_float(float_to_bf16(-2.5f)), -2.5f);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isinf(bf16_to_float(float_to_bf16(std::numeric_limits<float>::infinity()))));
  // the largest finite float rounds up to infinity in bf16
  EXPECT_TRUE(std::isinf(bf16_to_float(float_to_bf16(std::numeric_limits<float>::max()))));
}

TEST(DType, F16RoundsToNearestEvenWithSubnormals) {
  EXPECT_EQ(float_to_f16(1.0f).bits, 0x3c00);
  EXPECT_EQ(float_to_f16(-2.0f).bits, 0xc000);
  EXPECT_EQ(float_to_f16(65504.0f).bits, 0x7bff);
  EXPECT_EQ(float_to_f16(65520.0f).bits, 0x7c00);  // halfway to 2^16 rounds to inf
  EXPECT_EQ(float_to_f16(65519.0f).bits, 0x7bff);
  // ties: 1 + 2^-11 is halfway between 1 and 1 + 2^-10 -> even (1)
  EXPECT_EQ(float_to_f16(1.0f + std::ldexp(1.0f, -11)).bits, 0x3c00);
  EXPECT_EQ(float_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)).bits, 0x3c02);
  // smallest subnormal 2^-24 and its half (tie to even -> 0), 1.5 * 2^-24 -> 2 * 2^-24
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -24)).bits, 0x0001);
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -25)).bits, 0x0000);
  EXPECT_EQ(float_to_f16(1.5f * std::ldexp(1.0f, -24)).bits, 0x0002);
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -14)).bits, 0x0400);  // smallest normal
  for (uint32_t b = 0; b < 0x7c00; ++b) {  // every finite positive half round-trips
    f16_t h;
    h.bits = static_cast<uint16_t>(b);
    ASSERT_EQ(float_to_f16(f16_to_float(h)).bits, b) << b;
  }
  EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(std::nanf("")))));
}

TEST(DType, TensorCastsAcrossDtypes) {
  Tensor x = Tensor::from_vector<float>({1.5f, -2.25f, 3.0f, 1.0f + std::ldexp(1.0f, -8)}, {2, 2});
  EXPECT_EQ(x.to(DType::f64).to_vector<double>(), (std::vector<double>{1.5, -2.25, 3.0, 1.0 + std::ldexp(1.0, -8)}));
  EXPECT_EQ(x.to(DType::bf16).to(DType::f32).to_vector<float>(), (std::vector<float>{1.5f, -2.25f, 3.0f, 1.0f}));
  EXPECT_EQ(x.to(DType::i32).to_vector<int32_t>(), (std::vector<int32_t>{1, -2, 3, 1}));
  // strided cast: transpose then cast
  auto t = x.transpose(0, 1).to(DType::f16).to_vector<float>();
  EXPECT_EQ(t, (std::vector<float>{1.5f, 3.0f, -2.25f, 1.00390625f}));  // exact in f16
  EXPECT_EQ(dtype_from_name("bf16"), DType::bf16);
  EXPECT_THROW(dtype_from_name("float99"), Error);
}

TEST(Errors, MessagesCarryLocationAndText) {
  try {
    LATHE_CHECK(1 + 1 == 3) << "arith: got " << 2;
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("test_tensor.cpp:"), std::string::npos) << m;
    EXPECT_NE(m.find("arith: got 2"), std::string::npos) << m;
    EXPECT_EQ(e.where().rfind("test_tensor.cpp:", 0), 0u);
  }
  try {
    broadcast_shapes({2, 3}, {4, 3}, "add");
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("add: shapes [2, 3] and [4, 3] cannot be broadcast"), std::string::npos) << m;
  }
  EXPECT_EQ(broadcast_shapes({2, 1, 3}, {4, 1}, "add"), (Shape{2, 4, 3}));
  EXPECT_EQ(Device::parse("cuda:1").index, 1);
  EXPECT_THROW(Device::parse("tpu"), Error);
}
