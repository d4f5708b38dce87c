// Shared plumbing of the CUDA benchmarks that time transfers with CUDA events
// (cuda_ipc_bench, nccl_m2n_bench, generate_bench): a checked-call macro that throws naming the
// call, RAII stream and device buffer, medians of event-timed steps, size labels.
// Needs only the CUDA runtime (no kernels of ours).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

namespace tandem::bench {

// A benchmark error: caught at the top of the process and reported there.
struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};
[[noreturn]] inline void fail(const std::string& what) { throw Failure(what); }

// CUDA calls of a benchmark: a failure throws, naming the call.
#define CK(expr)                                                                                    \
  do {                                                                                              \
    if (const cudaError_t ck_err_ = (expr); ck_err_ != cudaSuccess)                                 \
      ::tandem::bench::fail(std::string(#expr) + " (line " + std::to_string(__LINE__) + "): " +     \
                            cudaGetErrorName(ck_err_) + ", " + cudaGetErrorString(ck_err_));        \
  } while (0)

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(s); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
};

struct Dev {
  void* p = nullptr;
  explicit Dev(size_t bytes) { CK(cudaMalloc(&p, bytes)); }
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  char* at(size_t off) const { return static_cast<char*>(p) + off; }
};

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// "4 KiB", "8 MiB".
inline std::string size_text(size_t bytes) {
  return bytes >= (size_t{1} << 20) ? std::to_string(bytes >> 20) + " MiB" : std::to_string(bytes >> 10) + " KiB";
}

// ms of the work `enqueue` puts on `s`, timed by events around it.
template <typename F>
double timed_ms(cudaStream_t s, F&& enqueue) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  CK(cudaEventRecord(a, s));
  enqueue();
  CK(cudaEventRecord(b, s));
  CK(cudaEventSynchronize(b));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, a, b));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms;
}

// Median over the gaps between events recorded after each of `n` steps (`step(k)`
// enqueues step k on `s`), in microseconds divided by `per_step` (2 when a step
// is a round trip and the one-way time is wanted).
template <typename F>
double median_step_us(cudaStream_t s, int n, F&& step, double per_step = 1) {
  std::vector<cudaEvent_t> ev(static_cast<size_t>(n) + 1);
  for (cudaEvent_t& e : ev) CK(cudaEventCreate(&e));
  CK(cudaEventRecord(ev[0], s));
  for (int k = 0; k < n; ++k) {
    step(k);
    CK(cudaEventRecord(ev[k + 1], s));
  }
  CK(cudaEventSynchronize(ev[n]));
  std::vector<double> gaps;
  for (int k = 0; k < n; ++k) {
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, ev[k], ev[k + 1]));
    gaps.push_back(ms * 1e3 / per_step);
  }
  for (cudaEvent_t e : ev) cudaEventDestroy(e);
  return median(gaps);
}

}  // namespace tandem::bench
