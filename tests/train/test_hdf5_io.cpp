#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "tests/common/test_helpers.h"
#include "train/hdf5_io.h"

namespace lathe::train {
namespace {

using test::error_of;
using test::TmpDir;

const DType kAll[] = {DType::f64, DType::f32, DType::bf16, DType::f16, DType::i64, DType::i32, DType::u8, DType::i8};

// A tensor whose bytes are random: for float dtypes this includes NaNs with payloads,
// infinities and subnormals, so a round trip that converts anything shows up.
Tensor random_bits(const Shape& shape, DType dt, uint32_t seed) {
  Tensor t = Tensor::empty(shape, dt);
  std::mt19937 rng(seed);
  auto* p = static_cast<unsigned char*>(t.raw_data());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<unsigned char>(rng());
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  Tensor ca = a.contiguous(), cb = b.contiguous();
  return ca.dtype() == cb.dtype() && ca.shape() == cb.shape() && ca.nbytes() == cb.nbytes() &&
         (ca.nbytes() == 0 || std::memcmp(ca.raw_data(), cb.raw_data(), ca.nbytes()) == 0);
}

std::string name_of(DType dt) { return std::string("model/layers.0.attn.") + dtype_name(dt) + ".q_proj.weight"; }

TEST(Hdf5Io, EveryDtypeRoundTripsBitExactly) {
  TmpDir tmp;
  std::string path = tmp / "a.h5";
  std::vector<Tensor> written;
  {
    H5Writer w(path);
    uint32_t seed = 1;
    for (DType dt : kAll) {
      Tensor t = random_bits({3, 5}, dt, seed++);
      w.write_tensor(name_of(dt), t);
      written.push_back(t);
    }
    w.close();
  }
  H5Reader r(path);
  size_t i = 0;
  for (DType dt : kAll) {
    SCOPED_TRACE(dtype_name(dt));
    EXPECT_EQ(r.dtype(name_of(dt)), dt);
    EXPECT_EQ(r.shape(name_of(dt)), (Shape{3, 5}));
    Tensor back = r.read_tensor(name_of(dt));
    EXPECT_EQ(back.dtype(), dt);
    EXPECT_TRUE(same_bytes(back, written[i++]));
  }
  // bf16 is stored as uint16 bits tagged with dtype="bf16"; the others need no tag.
  EXPECT_EQ(r.attr_string(name_of(DType::bf16), "dtype"), "bf16");
  EXPECT_FALSE(r.has_attr(name_of(DType::f16), "dtype"));
}

TEST(Hdf5Io, DottedNamesAreLinksInsideGroups) {
  TmpDir tmp;
  std::string path = tmp / "names.h5";
  {
    H5Writer w(path);
    w.write_tensor("model/layers.0.attn.q_proj.weight", Tensor::arange(0, 6, 1, DType::f32).view({2, 3}));
    w.write_tensor("model/layers.1.mlp.up.bias", Tensor::ones({4}, DType::f32));
    w.write_tensor("optim/layers.0.attn.q_proj.weight/exp_avg", Tensor::zeros({2, 3}, DType::f32));
    w.close();
  }
  H5Reader r(path);
  // Dots do not make groups: "model" has exactly the two parameter names as children.
  EXPECT_EQ(r.list("model"), (std::vector<std::string>{"layers.0.attn.q_proj.weight", "layers.1.mlp.up.bias"}));
  EXPECT_EQ(r.list("/"), (std::vector<std::string>{"model", "optim"}));
  EXPECT_TRUE(r.is_group("optim/layers.0.attn.q_proj.weight"));
  EXPECT_TRUE(r.is_dataset("/model/layers.1.mlp.up.bias"));
  EXPECT_FALSE(r.exists("model/layers"));
  EXPECT_EQ(r.list_datasets("/"),
            (std::vector<std::string>{"model/layers.0.attn.q_proj.weight", "model/layers.1.mlp.up.bias",
                                      "optim/layers.0.attn.q_proj.weight/exp_avg"}));
  EXPECT_EQ(r.read_tensor("model/layers.0.attn.q_proj.weight").to_vector<float>(),
            (std::vector<float>{0, 1, 2, 3, 4, 5}));
}

TEST(Hdf5Io, NonContiguousZeroDimAndEmptyTensors) {
  TmpDir tmp;
  std::string path = tmp / "shapes.h5";
  Tensor base = random_bits({4, 3}, DType::f64, 11);
  Tensor tr = base.transpose(0, 1);                     // (3, 4), strided
  Tensor sl = base.slice(0, 0, 4, 2);                   // every other row
  Tensor sc = Tensor::scalar(-2.75, DType::f32);        // 0-d
  Tensor em = Tensor::empty({0, 7}, DType::bf16);       // empty
  {
    H5Writer w(path);
    w.write_tensor("t", tr);
    w.write_tensor("s", sl);
    w.write_tensor("scalar", sc);
    w.write_tensor("empty", em);
    w.close();
  }
  H5Reader r(path);
  Tensor t = r.read_tensor("t");
  ASSERT_EQ(t.shape(), (Shape{3, 4}));
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 4; ++j) EXPECT_EQ(t.at({i, j}), base.at({j, i}));
  Tensor s = r.read_tensor("s");
  ASSERT_EQ(s.shape(), (Shape{2, 3}));
  for (int64_t j = 0; j < 3; ++j) EXPECT_EQ(s.at({1, j}), base.at({2, j}));
  Tensor z = r.read_tensor("scalar");
  EXPECT_EQ(z.dim(), 0);
  EXPECT_EQ(z.item(), -2.75);
  Tensor e = r.read_tensor("empty");
  EXPECT_EQ(e.shape(), (Shape{0, 7}));
  EXPECT_EQ(e.dtype(), DType::bf16);

  // read_into a strided destination
  Tensor dst_base = Tensor::zeros({4, 3}, DType::f64);
  Tensor dst = dst_base.transpose(0, 1);
  r.read_into("t", dst);
  EXPECT_TRUE(same_bytes(dst_base, base));
}

TEST(Hdf5Io, StringsAndAttributes) {
  TmpDir tmp;
  std::string path = tmp / "attrs.h5";
  std::string config = "model {\n  name: \"gpt2\"  # \xc3\xa9t\xc3\xa9\n}\noptimizer { lr: 3e-4 }\n";
  {
    H5Writer w(path);
    w.write_string("config", config);
    w.write_tensor("model/w", Tensor::ones({2}, DType::f32));
    w.set_attr("/", "step", int64_t{1234567890123});
    w.set_attr("/", "loss_scale", 65536.5);
    w.set_attr("/", "format", "lathe-checkpoint");
    w.set_attr("model/w", "note", std::string("first"));
    w.set_attr("model/w", "note", std::string("replaced"));
    w.create_group("rng");
    w.set_attr("rng", "seed", int64_t{-3});
    w.close();
  }
  H5Reader r(path);
  EXPECT_EQ(r.read_string("config"), config);
  EXPECT_EQ(r.attr_int("/", "step"), 1234567890123);
  EXPECT_EQ(r.attr_double("/", "loss_scale"), 65536.5);
  EXPECT_EQ(r.attr_double("/", "step"), 1234567890123.0);  // ints read as doubles too
  EXPECT_EQ(r.attr_string("/", "format"), "lathe-checkpoint");
  EXPECT_EQ(r.attr_string("model/w", "note"), "replaced");
  EXPECT_EQ(r.attr_int("rng", "seed"), -3);
  EXPECT_TRUE(r.is_group("rng"));
  EXPECT_FALSE(r.has_attr("/", "nope"));
  EXPECT_NE(error_of([&] { r.attr_int("/", "loss_scale"); }).find("not an integer"), std::string::npos);
  EXPECT_NE(error_of([&] { r.attr_string("/", "nope"); }).find("no attribute 'nope'"), std::string::npos);
}

TEST(Hdf5Io, ErrorsNameTheFileAndTheDataset) {
  TmpDir tmp;
  std::string path = tmp / "err.h5";
  {
    H5Writer w(path);
    w.write_tensor("model/a.weight", Tensor::ones({2, 3}, DType::f32));
    std::string dup = error_of([&] { w.write_tensor("model/a.weight", Tensor::ones({1}, DType::f32)); });
    EXPECT_NE(dup.find("already exists"), std::string::npos) << dup;
    w.close();
  }
  H5Reader r(path);
  std::string missing = error_of([&] { r.read_tensor("model/b.weight"); });
  EXPECT_NE(missing.find(path), std::string::npos) << missing;
  EXPECT_NE(missing.find("model/b.weight"), std::string::npos) << missing;
  EXPECT_NE(missing.find("no such dataset"), std::string::npos) << missing;

  std::string group = error_of([&] { r.read_tensor("model"); });
  EXPECT_NE(group.find("is a group"), std::string::npos) << group;

  std::string dt = error_of([&] { r.read_tensor("model/a.weight", DType::bf16); });
  EXPECT_NE(dt.find("expected dtype bf16, found f32"), std::string::npos) << dt;
  EXPECT_NE(dt.find(path), std::string::npos) << dt;
  std::string sh = error_of([&] { r.read_tensor("model/a.weight", DType::f32, Shape{3, 2}); });
  EXPECT_NE(sh.find("expected shape [3, 2], found [2, 3]"), std::string::npos) << sh;
  std::string into = error_of([&] { r.read_into("model/a.weight", Tensor::zeros({2, 3}, DType::f64)); });
  EXPECT_NE(into.find("model/a.weight"), std::string::npos) << into;

  std::string nofile = error_of([&] { H5Reader bad(tmp / "nope.h5"); });
  EXPECT_NE(nofile.find(tmp / "nope.h5"), std::string::npos) << nofile;

  test::write_file(tmp / "text.h5", "this is not hdf5\n");
  std::string nothdf = error_of([&] { H5Reader bad(tmp / "text.h5"); });
  EXPECT_NE(nothdf.find("not an HDF5 file"), std::string::npos) << nothdf;

  std::string nodir = error_of([&] { H5Writer w(tmp / "no/such/dir/x.h5"); });
  EXPECT_NE(nodir.find(tmp / "no/such/dir/x.h5"), std::string::npos) << nodir;
}

TEST(Hdf5Io, TruncatedFileIsAnErrorNamingTheFile) {
  TmpDir tmp;
  std::string path = tmp / "trunc.h5";
  {
    H5Writer w(path);
    for (int i = 0; i < 4; ++i)
      w.write_tensor("model/layers." + std::to_string(i) + ".w", random_bits({64, 64}, DType::f32, 100 + i));
    w.close();
  }
  auto size = std::filesystem::file_size(path);
  std::filesystem::resize_file(path, size / 2);
  // Opening or reading must fail; either way the message names the file.
  std::string msg = error_of([&] {
    H5Reader r(path);
    for (const std::string& n : r.list_datasets("/")) r.read_tensor(n);
  });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
}

// h5dump (hdf5-tools) must see the dotted parameter names, and show the f16 dataset as
// real half floats (not raw integers).
TEST(Hdf5Io, H5dumpReadsTheFile) {
  if (std::system("h5dump --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "h5dump not installed";
  TmpDir tmp;
  std::string path = tmp / "dump.h5";
  {
    H5Writer w(path);
    w.write_tensor("model/layers.0.attn.q_proj.weight", Tensor::from_vector<float>({1.5f, -2.0f}, {2}).to(DType::f16));
    w.close();
  }
  std::string out_path = tmp / "dump.txt";
  std::string cmd = "h5dump '" + path + "' > '" + out_path + "' 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << test::read_file(out_path);
  std::string out = test::read_file(out_path);
  EXPECT_NE(out.find("DATASET \"layers.0.attn.q_proj.weight\""), std::string::npos) << out;
  EXPECT_NE(out.find("GROUP \"model\""), std::string::npos) << out;
  EXPECT_NE(out.find("1.5, -2"), std::string::npos) << out;
}

}  // namespace
}  // namespace lathe::train
