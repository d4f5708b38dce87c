// One test per way a safetensors file can be broken. Each checks the status code
// and that the message names the file and, where there is one, the tensor.
#include <sys/stat.h>

#include "st_test_util.h"

namespace tandem::model {
namespace {

using namespace st_test;

class SafetensorsCorrupt : public TempDirTest {
 protected:
  Status open_raw(const std::string& raw) {
    write_bytes(path(kName), raw);
    auto f = SafetensorsFile::open(path(kName));
    return f.status();
  }
  // Asserts the code and that the message names the file and every `needles`.
  void expect_error(const Status& st, StatusCode code, std::initializer_list<std::string> needles = {}) {
    EXPECT_EQ(st.code(), code) << st.to_string();
    EXPECT_TRUE(contains(st.message(), kName)) << st.message();
    for (const auto& n : needles) EXPECT_TRUE(contains(st.message(), n)) << "'" << n << "' not in: " << st.message();
  }
  static std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                           uint64_t begin, uint64_t end) {
    return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
           std::to_string(begin) + "," + std::to_string(end) + "]}";
  }

  static constexpr const char* kName = "bad.safetensors";
};

TEST_F(SafetensorsCorrupt, FileShorterThanEightBytes) {
  expect_error(open_raw(std::string("\x05\0\0\0\0", 5)), StatusCode::kDataLoss, {"5 bytes"});
  expect_error(open_raw(""), StatusCode::kDataLoss);
}

TEST_F(SafetensorsCorrupt, HeaderLengthLargerThanFile) {
  const std::string header = "{" + entry("w", "U8", "[4]", 0, 4) + "}";
  expect_error(open_raw(le64(1000) + header + "abcd"), StatusCode::kDataLoss, {"header length 1000"});
}

TEST_F(SafetensorsCorrupt, HeaderLengthOverOneHundredMegabytes) {
  expect_error(open_raw(le64(100'000'001) + "{}"), StatusCode::kDataLoss, {"100000001", "100000000"});
  expect_error(open_raw(le64(~uint64_t{0}) + "{}"), StatusCode::kDataLoss);
}

TEST_F(SafetensorsCorrupt, InvalidJson) {
  expect_error(open_raw(raw_file("{\"w\":{\"dtype\":\"U8\",", 0)), StatusCode::kDataLoss, {"invalid JSON"});
  expect_error(open_raw(raw_file("{} {}", 0)), StatusCode::kDataLoss, {"invalid JSON"});
  expect_error(open_raw(raw_file("", 0)), StatusCode::kDataLoss);
}

TEST_F(SafetensorsCorrupt, NonObjectJson) {
  expect_error(open_raw(raw_file("[1,2,3]", 0)), StatusCode::kDataLoss, {"not an object"});
  expect_error(open_raw(raw_file("\"x\"", 0)), StatusCode::kDataLoss, {"not an object"});
  expect_error(open_raw(raw_file("{" + std::string("\"w\":[1]") + "}", 0)), StatusCode::kDataLoss,
               {"'w'", "not an object"});
}

TEST_F(SafetensorsCorrupt, InvalidUtf8) {
  const std::string bad_name = "{" + entry("w\xff", "U8", "[1]", 0, 1) + "}";
  expect_error(open_raw(raw_file(bad_name, 1)), StatusCode::kDataLoss, {"UTF-8"});
  const std::string overlong = "{" + entry("w\xc0\xaf", "U8", "[1]", 0, 1) + "}";
  expect_error(open_raw(raw_file(overlong, 1)), StatusCode::kDataLoss, {"UTF-8"});
  const std::string surrogate = "{" + entry("w\xed\xa0\x80", "U8", "[1]", 0, 1) + "}";
  expect_error(open_raw(raw_file(surrogate, 1)), StatusCode::kDataLoss, {"UTF-8"});
  const std::string cut = "{" + entry("w\xe6\x97", "U8", "[1]", 0, 1) + "}";
  expect_error(open_raw(raw_file(cut, 1)), StatusCode::kDataLoss, {"UTF-8"});
}

TEST_F(SafetensorsCorrupt, UnknownDtype) {
  expect_error(open_raw(raw_file("{" + entry("x.weight", "Q7", "[1]", 0, 1) + "}", 1)), StatusCode::kDataLoss,
               {"x.weight", "unknown dtype 'Q7'"});
  expect_error(open_raw(raw_file("{\"x.weight\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,1]}}", 1)),
               StatusCode::kDataLoss, {"x.weight", "dtype"});
}

TEST_F(SafetensorsCorrupt, SpecDtypeWeCannotLoadIsUnimplemented) {
  expect_error(open_raw(raw_file("{" + entry("x.weight", "F8_E4M3", "[4]", 0, 4) + "}", 4)),
               StatusCode::kUnimplemented, {"x.weight", "F8_E4M3"});
}

TEST_F(SafetensorsCorrupt, NegativeShape) {
  expect_error(open_raw(raw_file("{" + entry("x.weight", "F32", "[2,-1]", 0, 8) + "}", 8)), StatusCode::kDataLoss,
               {"x.weight", "negative"});
  expect_error(open_raw(raw_file("{" + entry("x.weight", "F32", "[2.5]", 0, 8) + "}", 8)), StatusCode::kDataLoss,
               {"x.weight", "not an integer"});
  expect_error(open_raw(raw_file("{" + entry("x.weight", "F32", "7", 0, 4) + "}", 4)), StatusCode::kDataLoss,
               {"x.weight", "not an array"});
}

TEST_F(SafetensorsCorrupt, ShapeDoesNotMatchOffsets) {
  expect_error(open_raw(raw_file("{" + entry("x.weight", "BF16", "[2,4]", 0, 12) + "}", 12)), StatusCode::kDataLoss,
               {"x.weight", "data_offsets [0, 12] hold 12 bytes but BF16 [2, 4] needs 16"});
}

TEST_F(SafetensorsCorrupt, ElementCountOverflowIsCaught) {
  const std::string huge = "[4611686018427387904,4611686018427387904,4]";  // 2^62 * 2^62 * 4
  expect_error(open_raw(raw_file("{" + entry("x.weight", "F32", huge, 0, 0) + "}", 0)), StatusCode::kDataLoss,
               {"x.weight", "too large"});
  const std::string wraps_to_zero = "[4294967296,4294967296]";  // 2^64 elements: wraps to 0 if unchecked
  expect_error(open_raw(raw_file("{" + entry("x.weight", "U8", wraps_to_zero, 0, 0) + "}", 0)),
               StatusCode::kDataLoss, {"x.weight", "too large"});
}

TEST_F(SafetensorsCorrupt, MalformedOffsets) {
  expect_error(open_raw(raw_file("{" + entry("x.weight", "U8", "[0]", 8, 4) + "}", 8)), StatusCode::kDataLoss,
               {"x.weight", "end before they begin"});
  expect_error(open_raw(raw_file("{\"x.weight\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 1)),
               StatusCode::kDataLoss, {"x.weight", "data_offsets"});
  expect_error(open_raw(raw_file("{\"x.weight\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 1)),
               StatusCode::kDataLoss, {"x.weight", "data_offsets"});
  expect_error(open_raw(raw_file("{\"x.weight\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1)), StatusCode::kDataLoss,
               {"x.weight", "missing \"data_offsets\""});
}

TEST_F(SafetensorsCorrupt, OffsetsPastTheEnd) {
  expect_error(open_raw(raw_file("{" + entry("x.weight", "F32", "[4]", 0, 16) + "}", 8)), StatusCode::kDataLoss,
               {"x.weight", "past the end"});
}

TEST_F(SafetensorsCorrupt, OverlappingTensors) {
  const std::string h = "{" + entry("a.weight", "I32", "[4]", 0, 16) + "," + entry("b.weight", "I32", "[4]", 8, 24) + "}";
  expect_error(open_raw(raw_file(h, 24)), StatusCode::kDataLoss, {"a.weight", "b.weight", "overlap"});
  const std::string same = "{" + entry("a.weight", "I32", "[4]", 0, 16) + "," + entry("b.weight", "U8", "[16]", 0, 16) + "}";
  expect_error(open_raw(raw_file(same, 16)), StatusCode::kDataLoss, {"a.weight", "b.weight", "overlap"});
}

TEST_F(SafetensorsCorrupt, GapBetweenTensors) {
  const std::string h = "{" + entry("a.weight", "I32", "[4]", 0, 16) + "," + entry("b.weight", "I32", "[4]", 20, 36) + "}";
  expect_error(open_raw(raw_file(h, 36)), StatusCode::kDataLoss, {"a.weight", "b.weight", "gap of 4 bytes"});
  const std::string at_start = "{" + entry("a.weight", "I32", "[4]", 8, 24) + "}";
  expect_error(open_raw(raw_file(at_start, 24)), StatusCode::kDataLoss, {"a.weight", "gap of 8 bytes"});
}

TEST_F(SafetensorsCorrupt, TrailingGarbageAfterTheBuffer) {
  const std::string h = "{" + entry("a.weight", "I32", "[4]", 0, 16) + "}";
  expect_error(open_raw(raw_file(h, 16 + 5)), StatusCode::kDataLoss, {"5 bytes of trailing data"});
  expect_error(open_raw(raw_file("{}", 3)), StatusCode::kDataLoss, {"3 bytes of trailing data"});
}

TEST_F(SafetensorsCorrupt, DuplicateTensorNames) {
  const std::string h = "{" + entry("x.weight", "U8", "[4]", 0, 4) + "," + entry("x.weight", "U8", "[4]", 4, 8) + "}";
  expect_error(open_raw(raw_file(h, 8)), StatusCode::kDataLoss, {"duplicate", "'x.weight'"});
  // The same trap one level down: a repeated field inside an entry.
  const std::string field = "{\"x.weight\":{\"dtype\":\"U8\",\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,4]}}";
  expect_error(open_raw(raw_file(field, 4)), StatusCode::kDataLoss, {"duplicate key 'dtype'", "x.weight"});
}

TEST_F(SafetensorsCorrupt, BadMetadata) {
  expect_error(open_raw(raw_file("{\"__metadata__\":{\"format\":1}}", 0)), StatusCode::kDataLoss,
               {"__metadata__", "format"});
  expect_error(open_raw(raw_file("{\"__metadata__\":[\"pt\"]}", 0)), StatusCode::kDataLoss, {"__metadata__"});
}

TEST_F(SafetensorsCorrupt, TruncatedFile) {
  std::vector<TensorToWrite> ts = {make_tensor("a.weight", DType::kF32, {4, 4}),
                                   make_tensor("z.weight", DType::kF32, {8})};
  ASSERT_TRUE(write_safetensors(path(kName), ts).is_ok());
  const std::string good = read_bytes(path(kName));
  // Data cut short: the last tensor (largest offset) runs past the end.
  expect_error(open_raw(good.substr(0, good.size() - 3)), StatusCode::kDataLoss, {"z.weight", "past the end"});
  // Cut inside the header.
  expect_error(open_raw(good.substr(0, 40)), StatusCode::kDataLoss, {"header length"});
  // Cut inside the length itself.
  expect_error(open_raw(good.substr(0, 6)), StatusCode::kDataLoss, {"6 bytes"});
}

// Whatever the damage, open() returns a Status naming the file or a valid file;
// run under ASan this also shows that nothing is read past the mapping.
TEST_F(SafetensorsCorrupt, RandomDamageNeverCrashes) {
  std::vector<TensorToWrite> ts = {make_tensor("a.weight", DType::kBF16, {3, 4}), make_tensor("b", DType::kI64, {2}),
                                   make_tensor("c", DType::kU8, {0}), make_tensor("d", DType::kF32, {})};
  ASSERT_TRUE(write_safetensors(path(kName), ts).is_ok());
  const std::string good = read_bytes(path(kName));
  auto check = [&](const std::string& raw) {
    write_bytes(path(kName), raw);
    auto f = SafetensorsFile::open(path(kName));
    if (!f.is_ok()) {
      EXPECT_TRUE(contains(f.status().message(), kName)) << f.status().message();
      return;
    }
    for (const auto& t : (*f)->tensors()) {  // touch every byte handed out
      unsigned sum = 0;
      for (size_t i = 0; i < t.nbytes; ++i) sum += std::to_integer<unsigned>(t.data[i]);
      EXPECT_LE(t.nbytes, raw.size());
      (void)sum;
    }
  };
  for (size_t len = 0; len < good.size(); ++len) check(good.substr(0, len));
  uint64_t state = 0x9e3779b97f4a7c15ull;
  auto next = [&state] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  for (int round = 0; round < 400; ++round) {
    std::string raw = good;
    const int flips = 1 + static_cast<int>(next() % 3);
    for (int k = 0; k < flips; ++k) {
      const size_t at = next() % raw.size();
      // Bias towards digits and JSON punctuation: random bytes mostly just break UTF-8.
      static constexpr char kAlphabet[] = "0123456789[],:{}\" -\xff";
      raw[at] = (next() % 2) ? kAlphabet[next() % (sizeof(kAlphabet) - 1)] : static_cast<char>(next());
    }
    check(raw);
  }
}

TEST_F(SafetensorsCorrupt, MissingFileAndDirectory) {
  auto missing = SafetensorsFile::open(path("nope.safetensors"));
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(contains(missing.status().message(), "nope.safetensors")) << missing.status().message();
  auto d = SafetensorsFile::open(dir_.string());
  EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument) << d.status().to_string();
  ASSERT_EQ(::mkfifo(path("fifo.safetensors").c_str(), 0600), 0);
  auto fifo = SafetensorsFile::open(path("fifo.safetensors"));  // must not block
  EXPECT_EQ(fifo.status().code(), StatusCode::kInvalidArgument) << fifo.status().to_string();
}

}  // namespace
}  // namespace tandem::model
