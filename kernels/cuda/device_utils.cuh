// Device-side helpers shared by the kernel files: element type conversion,
// warp/block reductions, launch sizing. Private to kernels/cuda.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "check.h"
#include "tandem/kernels/cuda.h"

namespace tandem::kernels::cuda::detail {

static_assert(sizeof(Bf16) == sizeof(__nv_bfloat16), "Bf16 must alias __nv_bfloat16");

// Public Bf16 <-> the CUDA type; float passes through.
template <typename T>
struct DeviceType {
  using type = T;
};
template <>
struct DeviceType<Bf16> {
  using type = __nv_bfloat16;
};
template <typename T>
using device_t = typename DeviceType<T>::type;

template <typename T>
inline device_t<T>* dev(T* p) {
  return reinterpret_cast<device_t<T>*>(p);
}
template <typename T>
inline const device_t<T>* dev(const T* p) {
  return reinterpret_cast<const device_t<T>*>(p);
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
// Round to nearest even, as tandem::float_to_bf16 and torch.
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block, returned to every thread. blockDim.x must be a multiple
// of 32; `shared` holds 32 floats. Ends with a barrier so `shared` can be reused.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float total = lane < warps ? shared[lane] : 0.0f;
  total = warp_sum(total);
  __syncthreads();
  return total;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid for grid-stride loops over `total` items: enough blocks to fill the GPU,
// capped so index arithmetic and launch limits stay comfortable.
inline unsigned grid_for(int64_t total, int block) {
  int64_t blocks = ceil_div(total, block);
  if (blocks < 1) blocks = 1;
  if (blocks > 65535 * 8) blocks = 65535 * 8;
  return static_cast<unsigned>(blocks);
}

}  // namespace tandem::kernels::cuda::detail
