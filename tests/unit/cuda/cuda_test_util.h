// Helpers for the CUDA-vs-CPU kernel tests: a fixture that skips without a
// device, an RAII device buffer, seeded random inputs, BF16 rounding and an
// allclose that reports the first mismatches.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "tandem/common/dtype.h"
#include "tandem/common/status.h"
#include "tandem/kernels/cpu.h"
#include "tandem/kernels/cuda.h"

namespace tandem::kernels::cuda::testing {

#define TANDEM_ASSERT_OK(expr)                                  \
  do {                                                          \
    const ::tandem::Status tandem_st_ = (expr);                 \
    ASSERT_TRUE(tandem_st_.is_ok()) << tandem_st_.to_string();  \
  } while (0)

// Every GPU test derives from this: without a usable device the test is
// skipped with the runtime's reason ("no CUDA device: <cudaGetErrorString>"),
// unless TANDEM_REQUIRE_GPU is set (scripts/gpu_check.sh sets it): on a GPU
// machine a driver too old for this build's runtime must fail, not skip.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<int> n = device_count();
    if (n.is_ok()) return;
    if (std::getenv("TANDEM_REQUIRE_GPU") != nullptr) FAIL() << "TANDEM_REQUIRE_GPU is set: " << n.status().message();
    GTEST_SKIP() << n.status().message();
  }
  void TearDown() override {
    if (IsSkipped()) return;
    // Surfaces asynchronous faults in the test that caused them.
    Status st = synchronize();
    EXPECT_TRUE(st.is_ok()) << st.to_string();
  }
};

// Device memory holding a copy of a host vector (or n zeroed elements).
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n = 0) : n_(n) {
    if (n_ == 0) return;
    cudaError_t err = cudaMalloc(reinterpret_cast<void**>(&ptr_), n_ * sizeof(T));
    if (err != cudaSuccess) {
      ADD_FAILURE() << "cudaMalloc(" << n_ * sizeof(T) << " bytes): " << cudaGetErrorString(err);
      ptr_ = nullptr;
      return;
    }
    check(cudaMemset(ptr_, 0, n_ * sizeof(T)), "cudaMemset");
    // cudaMemset (legacy default stream) may still be queued on return, and a
    // test that runs ops on a non-blocking stream of its own would not wait for it.
    check(cudaDeviceSynchronize(), "cudaMemset");
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    if (ptr_) check(cudaMemcpy(ptr_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice), "upload");
    if (ptr_) check(cudaDeviceSynchronize(), "upload");
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return ptr_; }
  size_t size() const { return n_; }

  // Waits for the current stream, then copies back.
  std::vector<T> to_host() const {
    std::vector<T> host(n_);
    Status st = synchronize();
    EXPECT_TRUE(st.is_ok()) << st.to_string();
    if (ptr_) check(cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost), "download");
    return host;
  }

 private:
  static void check(cudaError_t err, const char* what) {
    if (err != cudaSuccess) ADD_FAILURE() << what << ": " << cudaGetErrorString(err);
  }
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

inline std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

// Values rounded to BF16 and back, so the CPU reference sees exactly what the GPU reads.
inline std::vector<float> round_bf16(std::vector<float> v) {
  for (float& x : v) x = bf16_to_float(float_to_bf16(x));
  return v;
}

inline std::vector<Bf16> to_bf16(const std::vector<float>& v) {
  std::vector<Bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i].bits = float_to_bf16(v[i]);
  return out;
}

inline std::vector<float> from_bf16(const std::vector<Bf16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_to_float(v[i].bits);
  return out;
}

inline float rms(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += static_cast<double>(x) * x;
  return v.empty() ? 0.0f : static_cast<float>(std::sqrt(s / v.size()));
}

// |got - ref| <= atol + rtol * |ref| everywhere, no NaN/Inf. Reports the first
// 10 offenders and the largest errors.
inline ::testing::AssertionResult all_close(const std::vector<float>& got, const std::vector<float>& ref,
                                            float rtol, float atol) {
  if (got.size() != ref.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " vs reference " << ref.size();
  }
  size_t bad = 0;
  double max_abs = 0, max_rel = 0;
  std::ostringstream first;
  for (size_t i = 0; i < got.size(); ++i) {
    const double diff = std::fabs(static_cast<double>(got[i]) - ref[i]);
    const bool ok = std::isfinite(got[i]) && diff <= atol + rtol * std::fabs(ref[i]);
    max_abs = std::max(max_abs, diff);
    if (ref[i] != 0) max_rel = std::max(max_rel, diff / std::fabs(ref[i]));
    if (!ok && bad++ < 10) first << "\n  [" << i << "] got " << got[i] << " ref " << ref[i];
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << got.size() << " elements off (rtol " << rtol
                                       << ", atol " << atol << "; max abs " << max_abs << ", max rel " << max_rel
                                       << "):" << first.str();
}

}  // namespace tandem::kernels::cuda::testing
