// Shared baselines for benchmarks: measured memory-copy bandwidth and BLAS sgemm
// throughput on this machine, so every benchmark prints a ratio, not just a number.
#pragma once

#include <cblas.h>
#include <omp.h>

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

// Best-of-n streaming-read bandwidth in GB/s: a vectorisable sum over a buffer well
// beyond the last-level cache, on all cores (OpenMP). The limit for ops that
// mostly read weights or KV cache.
inline double read_gbps(size_t bytes = size_t{512} << 20, int reps = 5) {
  const size_t n = bytes / sizeof(float);
  std::vector<float> a(n, 1.0f);
  double best = 1e30;
  float total = 0;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    float s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
    for (size_t i = 0; i < n; i += 16) {
      float p = 0;
      for (size_t j = 0; j < 16; ++j) p += a[i + j];
      s += p;
    }
    best = std::min(best, seconds_since(t0));
    total += s;
  }
  volatile float sink = total;
  (void)sink;
  return static_cast<double>(bytes) / best / 1e9;
}

// Best-of-n cblas_sgemm GFLOP/s for C[m,n] = A[m,k]·B[n,k]ᵀ, with OpenBLAS using
// every core (the kernels library pins it to one thread per OpenMP worker; the
// baseline gets the library's own best threading).
inline double sgemm_gflops(int m, int n, int k, int reps = 5) {
  const int saved = openblas_get_num_threads();
  openblas_set_num_threads(omp_get_num_procs());
  std::vector<float> a(static_cast<size_t>(m) * k, 0.5f), b(static_cast<size_t>(n) * k, 0.25f),
      c(static_cast<size_t>(m) * n);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a.data(), k, b.data(), k, 0.0f, c.data(), n);
    best = std::min(best, seconds_since(t0));
  }
  openblas_set_num_threads(saved);
  return 2.0 * m * n * k / best / 1e9;
}

}  // namespace tandem::bench
