#include <cstdint>

#include "st_test_util.h"

namespace tandem::model {
namespace {

using namespace st_test;

class Safetensors : public TempDirTest {};

std::vector<TensorToWrite> all_dtype_tensors() {
  std::vector<TensorToWrite> v;
  unsigned seed = 1;
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kF64, DType::kI64, DType::kI32, DType::kI16,
                  DType::kI8, DType::kU8, DType::kBool}) {
    v.push_back(make_tensor("layer." + std::string(dtype_name(t)), t, {3, 5}, seed++));
  }
  v.push_back(make_tensor("scalar.f32", DType::kF32, {}, seed++));
  v.push_back(make_tensor("scalar.i8", DType::kI8, {}, seed++));
  v.push_back(make_tensor("empty.f16", DType::kF16, {0, 3}, seed++));
  v.push_back(make_tensor("empty.mid", DType::kI64, {2, 0, 4}, seed++));
  v.push_back(make_tensor("odd.u8", DType::kU8, {7}, seed++));  // breaks 8-byte multiples after it
  return v;
}

TEST_F(Safetensors, RoundTrip) {
  const auto tensors = all_dtype_tensors();
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "grüße, 模型"}};
  ASSERT_TRUE(write_safetensors(path("rt.safetensors"), tensors, meta).is_ok());

  auto f = SafetensorsFile::open(path("rt.safetensors"));
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_EQ((*f)->metadata(), meta);
  EXPECT_EQ((*f)->path(), path("rt.safetensors"));
  ASSERT_EQ((*f)->tensors().size(), tensors.size());
  for (size_t i = 1; i < (*f)->tensors().size(); ++i)
    EXPECT_LT((*f)->tensors()[i - 1].name, (*f)->tensors()[i].name);

  for (const auto& want : tensors) {
    SCOPED_TRACE(want.name);
    const TensorInfo* got = (*f)->find(want.name);
    ASSERT_NE(got, nullptr);
    EXPECT_EQ(got->name, want.name);
    EXPECT_EQ(got->dtype, want.dtype);
    EXPECT_EQ(got->shape, want.shape);
    EXPECT_EQ(got->file, path("rt.safetensors"));
    ASSERT_EQ(got->nbytes, want.data.size());
    EXPECT_EQ(got->numel() * static_cast<int64_t>(dtype_size(got->dtype)), static_cast<int64_t>(got->nbytes));
    if (got->nbytes) {
      EXPECT_EQ(std::memcmp(got->data, want.data.data(), got->nbytes), 0);
    }
    // The writer orders by element size, so every tensor lands naturally aligned.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(got->data) % dtype_size(got->dtype), 0u);
  }
  EXPECT_EQ((*f)->find("layer"), nullptr);
  EXPECT_EQ((*f)->find("layer.F32 "), nullptr);
}

TEST_F(Safetensors, HeaderIsPaddedToEightBytesAndNoTempFileRemains) {
  ASSERT_TRUE(write_safetensors(path("p.safetensors"), {make_tensor("a", DType::kU8, {3})}).is_ok());
  const std::string raw = read_bytes(path("p.safetensors"));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(raw[i]);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(raw.size(), 8 + n + 3);
  int entries = 0;
  for (const auto& e : fs::directory_iterator(dir_)) {
    ++entries;
    EXPECT_EQ(e.path().filename(), "p.safetensors");
  }
  EXPECT_EQ(entries, 1);
}

TEST_F(Safetensors, DefaultMetadataIsFormatPtAndEmptyMetadataIsOmitted) {
  ASSERT_TRUE(write_safetensors(path("d.safetensors"), {make_tensor("a", DType::kF32, {2})}).is_ok());
  auto d = SafetensorsFile::open(path("d.safetensors"));
  ASSERT_TRUE(d.is_ok()) << d.status().to_string();
  EXPECT_EQ((*d)->metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));

  ASSERT_TRUE(write_safetensors(path("e.safetensors"), {make_tensor("a", DType::kF32, {2})}, {}).is_ok());
  EXPECT_FALSE(contains(read_bytes(path("e.safetensors")), "__metadata__"));
  auto e = SafetensorsFile::open(path("e.safetensors"));
  ASSERT_TRUE(e.is_ok()) << e.status().to_string();
  EXPECT_TRUE((*e)->metadata().empty());
}

TEST_F(Safetensors, NoTensorsRoundTrips) {
  ASSERT_TRUE(write_safetensors(path("none.safetensors"), {}).is_ok());
  auto f = SafetensorsFile::open(path("none.safetensors"));
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_TRUE((*f)->tensors().empty());
}

TEST_F(Safetensors, SpecTestVectorOpens) {
  const std::string header = R"({"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}})";
  ASSERT_EQ(header.size(), 60u);
  std::string file = std::string("<\0\0\0\0\0\0\0", 8) + header + std::string(16, '\0');
  write_bytes(path("spec.safetensors"), file);
  auto f = SafetensorsFile::open(path("spec.safetensors"));
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  const TensorInfo* t = (*f)->find("test");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, DType::kI32);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(t->nbytes, 16u);
  for (size_t i = 0; i < 16; ++i) EXPECT_EQ(t->data[i], std::byte{0});
  EXPECT_TRUE((*f)->metadata().empty());
}

TEST_F(Safetensors, WhitespaceAroundHeaderIsAccepted) {
  const std::string header = "  \n\t{\"x\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}} \r\n    ";
  write_bytes(path("ws.safetensors"), raw_file(header, 2));
  auto f = SafetensorsFile::open(path("ws.safetensors"));
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  ASSERT_NE((*f)->find("x"), nullptr);
}

TEST_F(Safetensors, UnknownEntryFieldsAreIgnoredAndKeyOrderDoesNotMatter) {
  const std::string header =
      R"({"b":{"data_offsets":[4,6],"shape":[1],"dtype":"F16","extra":1},)"
      R"("a":{"shape":[1],"dtype":"F32","data_offsets":[0,4]}})";
  write_bytes(path("o.safetensors"), raw_file(header, 6));
  auto f = SafetensorsFile::open(path("o.safetensors"));
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_EQ((*f)->find("b")->dtype, DType::kF16);
}

TEST_F(Safetensors, WriterRefusesDataOfTheWrongSize) {
  auto t = make_tensor("x.weight", DType::kBF16, {2, 4});
  t.data.resize(12);
  Status st = write_safetensors(path("w.safetensors"), {t});
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(st.message(), "x.weight")) << st.message();
  EXPECT_TRUE(contains(st.message(), "w.safetensors")) << st.message();
  EXPECT_TRUE(contains(st.message(), "12 bytes but BF16 [2, 4] needs 16")) << st.message();
  EXPECT_FALSE(fs::exists(path("w.safetensors")));
  EXPECT_TRUE(fs::is_empty(dir_));
}

TEST_F(Safetensors, WriterRefusesDuplicateReservedAndNegative) {
  Status dup = write_safetensors(path("w.safetensors"), {make_tensor("a", DType::kF32, {1}),
                                                         make_tensor("a", DType::kF32, {1})});
  EXPECT_EQ(dup.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(dup.message(), "'a'")) << dup.message();

  Status reserved = write_safetensors(path("w.safetensors"), {make_tensor("__metadata__", DType::kF32, {1})});
  EXPECT_EQ(reserved.code(), StatusCode::kInvalidArgument);

  TensorToWrite neg{"neg", DType::kF32, {-1, 2}, {}};
  Status n = write_safetensors(path("w.safetensors"), {neg});
  EXPECT_EQ(n.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(n.message(), "neg")) << n.message();
  EXPECT_FALSE(fs::exists(path("w.safetensors")));
}

TEST_F(Safetensors, RewriteReplacesTheFile) {
  ASSERT_TRUE(write_safetensors(path("r.safetensors"), {make_tensor("old", DType::kF32, {4})}).is_ok());
  ASSERT_TRUE(write_safetensors(path("r.safetensors"), {make_tensor("new", DType::kF16, {2})}).is_ok());
  auto f = SafetensorsFile::open(path("r.safetensors"));
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_EQ((*f)->find("old"), nullptr);
  EXPECT_NE((*f)->find("new"), nullptr);
}

}  // namespace
}  // namespace tandem::model
