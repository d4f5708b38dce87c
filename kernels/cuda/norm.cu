// rmsnorm and add_rmsnorm: one block per row, FP32 sum of squares.
#include "device_utils.cuh"

namespace tandem::kernels::cuda {
namespace {

using detail::dev;
using detail::device_t;
using detail::from_float;
using detail::to_float;

constexpr int kBlock = 256;

// Each thread touches the same indices in both passes, so y may alias x.
template <typename T>
__global__ void rmsnorm_kernel(const T* x, const T* __restrict__ w, T* y, int64_t dim, float eps) {
  __shared__ float red[32];
  const T* xr = x + blockIdx.x * dim;
  T* yr = y + blockIdx.x * dim;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = to_float(xr[i]);
    ss += v * v;
  }
  ss = detail::block_sum(ss, red);
  const float inv = rsqrtf(ss / static_cast<float>(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    yr[i] = from_float<T>(to_float(w[i]) * (to_float(xr[i]) * inv));
  }
}

// The sum is rounded to T before it is stored and normed, as torch's
// `residual = residual + x` in the activation dtype.
template <typename T>
__global__ void add_rmsnorm_kernel(T* residual, const T* x, const T* __restrict__ w, T* y, int64_t dim,
                                   float eps) {
  __shared__ float red[32];
  T* rr = residual + blockIdx.x * dim;
  const T* xr = x + blockIdx.x * dim;
  T* yr = y + blockIdx.x * dim;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    T s = from_float<T>(to_float(rr[i]) + to_float(xr[i]));
    rr[i] = s;
    float v = to_float(s);
    ss += v * v;
  }
  ss = detail::block_sum(ss, red);
  const float inv = rsqrtf(ss / static_cast<float>(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    yr[i] = from_float<T>(to_float(w[i]) * (to_float(rr[i]) * inv));
  }
}

template <typename T>
Status rmsnorm_impl(const T* x, const T* w, T* y, int64_t n, int64_t dim, float eps) {
  const char* op = "rmsnorm";
  TANDEM_CUDA_REQUIRE(op, n >= 0 && dim >= 0, "negative size");
  TANDEM_CUDA_REQUIRE(op, n <= INT32_MAX, "too many rows");
  if (n == 0 || dim == 0) return Status::ok();
  TANDEM_CUDA_REQUIRE(op, x && w && y, "null pointer");
  rmsnorm_kernel<<<static_cast<unsigned>(n), kBlock, 0, detail::stream()>>>(dev(x), dev(w), dev(y), dim, eps);
  TANDEM_CUDA_CHECK_LAUNCH(op);
  return Status::ok();
}

template <typename T>
Status add_rmsnorm_impl(T* residual, const T* x, const T* w, T* y, int64_t n, int64_t dim, float eps) {
  const char* op = "add_rmsnorm";
  TANDEM_CUDA_REQUIRE(op, n >= 0 && dim >= 0, "negative size");
  TANDEM_CUDA_REQUIRE(op, n <= INT32_MAX, "too many rows");
  if (n == 0 || dim == 0) return Status::ok();
  TANDEM_CUDA_REQUIRE(op, residual && x && w && y, "null pointer");
  add_rmsnorm_kernel<<<static_cast<unsigned>(n), kBlock, 0, detail::stream()>>>(dev(residual), dev(x), dev(w),
                                                                                 dev(y), dim, eps);
  TANDEM_CUDA_CHECK_LAUNCH(op);
  return Status::ok();
}

}  // namespace

Status rmsnorm(const float* x, const float* w, float* y, int64_t n, int64_t dim, float eps) {
  return rmsnorm_impl(x, w, y, n, dim, eps);
}
Status rmsnorm(const Bf16* x, const Bf16* w, Bf16* y, int64_t n, int64_t dim, float eps) {
  return rmsnorm_impl(x, w, y, n, dim, eps);
}
Status add_rmsnorm(float* residual, const float* x, const float* w, float* y, int64_t n, int64_t dim,
                   float eps) {
  return add_rmsnorm_impl(residual, x, w, y, n, dim, eps);
}
Status add_rmsnorm(Bf16* residual, const Bf16* x, const Bf16* w, Bf16* y, int64_t n, int64_t dim,
                   float eps) {
  return add_rmsnorm_impl(residual, x, w, y, n, dim, eps);
}

}  // namespace tandem::kernels::cuda
