// Error plumbing and per-thread runtime state shared by the CUDA kernel files.
// Private to kernels/cuda; C++17-clean (included by .cu files) and free of
// device code (included by .cpp files).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "tandem/common/status.h"
#include "tandem/kernels/cuda.h"

namespace tandem::kernels::cuda::detail {

// "op: expr failed: cudaErrorX (text) [file:line]" as INTERNAL.
Status cuda_error(const char* op, const char* expr, cudaError_t err, const char* file, int line);
Status cublas_error(const char* op, const char* expr, cublasStatus_t st, const char* file, int line);
// Logs the same text and aborts: for the few places that cannot return a Status.
[[noreturn]] void cuda_fatal(const char* op, const char* expr, cudaError_t err, const char* file, int line);

cudaStream_t stream();

// The calling thread's cuBLAS handle for the current device, bound to stream().
Result<cublasHandle_t> cublas_handle(const char* op);

// Multiprocessor count of the current device (cached per device).
Result<int> sm_count(const char* op);

// Stream-ordered scratch from a library-owned memory pool that keeps freed
// memory (release threshold = max), so per-call scratch is cheap after warm-up
// and safe whichever stream the caller switches to: the free is ordered after
// the kernels that use it on that same stream.
class Scratch {
 public:
  Scratch() = default;
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  Status allocate(size_t bytes, const char* op);
  void* get() const { return ptr_; }
  template <typename T>
  T* as(size_t byte_offset = 0) const {
    return reinterpret_cast<T*>(static_cast<char*>(ptr_) + byte_offset);
  }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_ = nullptr;
};

// Pinned host staging buffer of this thread, grown on demand (for small
// device-to-host reads such as expert offsets and sampled ids).
Result<void*> pinned_host_buffer(size_t bytes, const char* op);

// Copies `bytes` from device `src` into this thread's pinned buffer and waits
// for the current stream; returns the pinned pointer (valid until the next call).
Result<const void*> read_back(const void* src, size_t bytes, const char* op);

inline bool fits_int(int64_t v) { return v >= 0 && v <= INT32_MAX; }

}  // namespace tandem::kernels::cuda::detail

// Returns a Status naming the op from the enclosing function when a CUDA call fails.
#define TANDEM_CUDA_CHECK(op, expr)                                                            \
  do {                                                                                         \
    cudaError_t tandem_cuda_err_ = (expr);                                                     \
    if (tandem_cuda_err_ != cudaSuccess)                                                       \
      return ::tandem::kernels::cuda::detail::cuda_error(op, #expr, tandem_cuda_err_, __FILE__, \
                                                         __LINE__);                            \
  } while (0)

// After a <<<...>>> launch: catches bad configurations and earlier sticky faults.
#define TANDEM_CUDA_CHECK_LAUNCH(op) TANDEM_CUDA_CHECK(op, cudaGetLastError())

#define TANDEM_CUBLAS_CHECK(op, expr)                                                             \
  do {                                                                                            \
    cublasStatus_t tandem_cublas_st_ = (expr);                                                    \
    if (tandem_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                               \
      return ::tandem::kernels::cuda::detail::cublas_error(op, #expr, tandem_cublas_st_, __FILE__, \
                                                           __LINE__);                             \
  } while (0)

// Aborts with the op name: for destructors and other places without a Status.
#define TANDEM_CUDA_CHECK_ABORT(op, expr)                                                           \
  do {                                                                                              \
    cudaError_t tandem_cuda_err_ = (expr);                                                          \
    if (tandem_cuda_err_ != cudaSuccess)                                                            \
      ::tandem::kernels::cuda::detail::cuda_fatal(op, #expr, tandem_cuda_err_, __FILE__, __LINE__); \
  } while (0)

// Argument validation at the op boundary.
#define TANDEM_CUDA_REQUIRE(op, cond, msg)                                                \
  do {                                                                                    \
    if (!(cond)) return ::tandem::invalid_argument(std::string(op) + ": " + (msg));      \
  } while (0)
