// Shared baselines for benchmarks: measured memory-copy bandwidth and BLAS sgemm
// throughput on this machine, so every benchmark prints a ratio, not just a number.
#pragma once

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

namespace tandem::bench {

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Best-of-n memcpy bandwidth in GB/s (bytes read + bytes written, over a buffer
// well beyond the last-level cache).
inline double memcpy_gbps(size_t bytes = size_t{256} << 20, int reps = 5) {
  std::vector<char> a(bytes, 1), b(bytes, 2);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    std::memcpy(b.data(), a.data(), bytes);
    best = std::min(best, seconds_since(t0));
  }
  volatile char sink = b[bytes / 2];
  (void)sink;
  return 2.0 * static_cast<double>(bytes) / best / 1e9;
}

// Best-of-n cblas_sgemm GFLOP/s for C[m,n] = A[m,k]·B[n,k]ᵀ.
inline double sgemm_gflops(int m, int n, int k, int reps = 5) {
  std::vector<float> a(static_cast<size_t>(m) * k, 0.5f), b(static_cast<size_t>(n) * k, 0.25f),
      c(static_cast<size_t>(m) * n);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a.data(), k, b.data(), k, 0.0f, c.data(), n);
    best = std::min(best, seconds_since(t0));
  }
  return 2.0 * m * n * k / best / 1e9;
}

}  // namespace tandem::bench
