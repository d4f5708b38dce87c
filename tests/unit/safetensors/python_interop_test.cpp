// Cross-checks with the reference implementation: a fixture written by the Python
// `safetensors` package (scripts/fixtures/make_safetensors_fixture.py) must read
// back exactly, and a file from our writer must load in Python.
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "st_test_util.h"

namespace tandem::model {
namespace {

using namespace st_test;

class SafetensorsPython : public TempDirTest {};

const std::string kFixtureDir = std::string(TANDEM_SOURCE_DIR) + "/tests/fixtures/safetensors";

TEST_F(SafetensorsPython, ReadsReferenceFixtureWrittenByPython) {
  const auto expected = nlohmann::json::parse(read_bytes(kFixtureDir + "/reference.json"));
  auto f = SafetensorsFile::open(kFixtureDir + "/reference.safetensors");
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_EQ((*f)->metadata(), (expected["metadata"].get<std::map<std::string, std::string>>()));
  ASSERT_EQ((*f)->tensors().size(), expected["tensors"].size());

  for (const auto& [name, want] : expected["tensors"].items()) {
    SCOPED_TRACE(name);
    const TensorInfo* t = (*f)->find(name);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(dtype_name(t->dtype), want["dtype"].get<std::string>());
    EXPECT_EQ(t->shape, want["shape"].get<std::vector<int64_t>>());
    const auto& values = want["values"];
    ASSERT_EQ(static_cast<size_t>(t->numel()), values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      SCOPED_TRACE(i);
      if (t->dtype == DType::kI64) {
        int64_t v;
        std::memcpy(&v, t->data + 8 * i, 8);
        EXPECT_EQ(v, values[i].get<int64_t>());
      } else if (t->dtype == DType::kI32) {
        int32_t v;
        std::memcpy(&v, t->data + 4 * i, 4);
        EXPECT_EQ(v, values[i].get<int32_t>());
      } else {
        float v;
        convert_to_float(t->dtype, t->data + dtype_size(t->dtype) * i, 1, &v);
        EXPECT_EQ(v, values[i].get<float>());
      }
    }
  }
}

int run_shell(const std::string& cmd) {
  const int rc = std::system(cmd.c_str());
  return (rc != -1 && WIFEXITED(rc)) ? WEXITSTATUS(rc) : -1;
}

// Values the snippet below recomputes from the index alone.
double float_value(size_t i) { return (static_cast<double>(i) - 3) * 0.25; }
int64_t int_value(size_t i) { return static_cast<int64_t>(i % 7) - 3; }

template <typename T>
std::vector<std::byte> filled(size_t n, T (*f)(size_t)) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = f(i);
  return bytes_of(v);
}

TensorToWrite python_tensor(DType dtype, std::vector<int64_t> shape, const std::string& suffix = "") {
  TensorToWrite t{"t." + std::string(dtype_name(dtype)) + suffix, dtype, std::move(shape), {}};
  int64_t n64 = 1;
  for (int64_t d : t.shape) n64 *= d;
  const auto n = static_cast<size_t>(n64);
  switch (dtype) {
    case DType::kF64: t.data = filled<double>(n, float_value); break;
    case DType::kI64: t.data = filled<int64_t>(n, int_value); break;
    case DType::kI32: t.data = filled<int32_t>(n, [](size_t i) { return static_cast<int32_t>(int_value(i)); }); break;
    case DType::kI16: t.data = filled<int16_t>(n, [](size_t i) { return static_cast<int16_t>(int_value(i)); }); break;
    case DType::kI8: t.data = filled<int8_t>(n, [](size_t i) { return static_cast<int8_t>(int_value(i)); }); break;
    case DType::kU8: t.data = filled<uint8_t>(n, [](size_t i) { return static_cast<uint8_t>(i * 5 % 256); }); break;
    case DType::kBool: t.data = filled<uint8_t>(n, [](size_t i) { return static_cast<uint8_t>(i % 2); }); break;
    default: {  // F32, F16, BF16 through the project's own converters
      std::vector<float> v(n);
      for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(float_value(i));
      t.data.resize(n * dtype_size(dtype));
      convert_from_float(dtype, v.data(), n, t.data.data());
    }
  }
  return t;
}

constexpr const char* kCheckScript = R"PY(
import json, sys
import numpy as np
from safetensors import safe_open

path, spec = sys.argv[1], json.loads(sys.argv[2])
np_types = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
            "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}

def expected(dtype, n):
    i = np.arange(n)
    if dtype in ("F32", "F16", "F64", "BF16"): return (i - 3) * 0.25
    if dtype == "U8": return i * 5 % 256
    if dtype == "BOOL": return i % 2 == 1
    return i % 7 - 3

with safe_open(path, framework="np") as f:
    assert f.metadata() == {"format": "pt", "writer": "tandem"}, f.metadata()
    assert sorted(f.keys()) == sorted(spec), (sorted(f.keys()), sorted(spec))
    for name, (dtype, shape) in spec.items():
        if dtype == "BF16":
            continue  # numpy has no bfloat16
        a = f.get_tensor(name)
        assert a.dtype == np_types[dtype], (name, a.dtype)
        assert list(a.shape) == shape, (name, a.shape)
        want = expected(dtype, a.size).reshape(shape)
        assert np.array_equal(a.astype(np.float64), want.astype(np.float64)), (name, a, want)
try:
    import torch
except ImportError:
    torch = None
if torch is not None:
    with safe_open(path, framework="pt") as f:
        for name, (dtype, shape) in spec.items():
            if dtype == "BF16":
                a = f.get_tensor(name)
                assert a.dtype == torch.bfloat16 and list(a.shape) == shape, (name, a.dtype, a.shape)
                want = expected(dtype, a.numel()).reshape(shape)
                assert np.array_equal(a.float().numpy().astype(np.float64), want), (name, a)
print("python safetensors: OK" + ("" if torch is not None else " (BF16 unchecked: no torch)"))
)PY";

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

TEST_F(SafetensorsPython, PythonLibraryLoadsOurFile) {
  if (run_shell("python3 -c 'import safetensors, numpy' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "python3 with the `safetensors` and `numpy` packages is not available; "
                    "install them (pip install safetensors numpy) to run this cross-check";

  std::vector<TensorToWrite> ts;
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16, DType::kF64, DType::kI64, DType::kI32, DType::kI16,
                  DType::kI8, DType::kU8, DType::kBool})
    ts.push_back(python_tensor(d, {2, 5}));
  ts.push_back(python_tensor(DType::kF32, {}, ".scalar"));
  ts.push_back(python_tensor(DType::kI64, {}, ".scalar"));
  ts.push_back(python_tensor(DType::kF16, {0, 3}, ".empty"));
  ts.push_back(python_tensor(DType::kU8, {3}, ".odd"));
  const std::string file = path("ours.safetensors");
  ASSERT_TRUE(write_safetensors(file, ts, {{"format", "pt"}, {"writer", "tandem"}}).is_ok());

  nlohmann::json spec = nlohmann::json::object();
  for (const auto& t : ts) spec[t.name] = nlohmann::json::array({std::string(dtype_name(t.dtype)), t.shape});
  write_bytes(path("check.py"), kCheckScript);
  const std::string log = path("python.log");
  const int rc = run_shell("python3 " + shell_quote(path("check.py")) + " " + shell_quote(file) + " " +
                           shell_quote(spec.dump()) + " >" + shell_quote(log) + " 2>&1");
  EXPECT_EQ(rc, 0) << read_bytes(log);
  std::cout << read_bytes(log);
}

}  // namespace
}  // namespace tandem::model
