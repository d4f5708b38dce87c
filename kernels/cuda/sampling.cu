// argmax and sample. sample follows cpu::sample step by step so that, given the
// same uniform, both pick the same token: probabilities in descending order
// (ties: lower id first), top-k cut, top-p cut, then an inverse-CDF draw.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include <string>

#include "device_utils.cuh"

namespace tandem::kernels::cuda {
namespace {

using detail::stream;

constexpr int kReduceThreads = 1024;

// Block-wide argmax of x[0, n); lowest index on ties; result valid in thread 0.
__device__ void block_argmax(const float* __restrict__ x, int64_t n, float& best_v, int64_t& best_i) {
  __shared__ float sv[32];
  __shared__ int64_t si[32];
  float v = -INFINITY;
  int64_t idx = INT64_MAX;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    if (x[i] > v) {  // strict: keeps this thread's lowest index among equals
      v = x[i];
      idx = i;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, idx, o);
    if (ov > v || (ov == v && oi < idx)) {
      v = ov;
      idx = oi;
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sv[warp] = v;
    si[warp] = idx;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) {
      if (sv[w] > v || (sv[w] == v && si[w] < idx)) {
        v = sv[w];
        idx = si[w];
      }
    }
    // All -inf (or NaN): index 0, as a sequential scan. A NaN at index 0 wins
    // too: the CPU scan (best = 0, then x[i] > x[best]) never moves off it.
    if (idx == INT64_MAX || (n > 0 && isnan(x[0]))) {
      idx = 0;
      v = n > 0 ? x[0] : v;
    }
    best_v = v;
    best_i = idx;
  }
}

__global__ void argmax_rows_kernel(const float* __restrict__ x, int64_t n, int32_t* __restrict__ out) {
  float v;
  int64_t i;
  block_argmax(x + blockIdx.x * n, n, v, i);
  if (threadIdx.x == 0) out[blockIdx.x] = static_cast<int32_t>(i);
}

// p[i] = exp(logits[i] / T - max_j logits[j] / T), unnormalised (the draw scales
// the uniform by the kept mass instead), and ids[i] = i. Rounded like the CPU:
// the product and difference are not fused into an FMA, and exp goes through
// double so the float result is the correctly rounded one, as glibc's expf
// gives (CUDA's expf may be 2 ulp off).
__global__ void softmax_numerators_kernel(const float* __restrict__ logits, int64_t vocab, float inv_temp,
                                          float* __restrict__ p, int32_t* __restrict__ ids) {
  __shared__ float red[32];
  float mx = -INFINITY;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, __fmul_rn(logits[i], inv_temp));
  mx = detail::warp_max(mx);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  mx = lane < static_cast<int>(blockDim.x >> 5) ? red[lane] : -INFINITY;
  mx = detail::warp_max(mx);
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float z = __fsub_rn(__fmul_rn(logits[i], inv_temp), mx);
    p[i] = static_cast<float>(exp(static_cast<double>(z)));
    ids[i] = static_cast<int32_t>(i);
  }
}

__global__ void widen_kernel(const float* __restrict__ src, double* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = src[i];
  }
}

// First index in [0, n) with cum[i] >= target (lower_bound) or > target (upper_bound).
__device__ int64_t search(const double* cum, int64_t n, double target, bool strict) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    const bool before = strict ? cum[mid] <= target : cum[mid] < target;
    if (before) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// cum = inclusive prefix sums of the sorted probabilities, in double as the CPU
// accumulates them: a float scan would move the bucket edges by ~1e-7 of the
// mass and, over thousands of kept tokens, sometimes pick a neighbour.
__global__ void pick_kernel(const double* __restrict__ cum, const int32_t* __restrict__ sorted_ids, int64_t vocab,
                            int32_t top_k, float top_p, float uniform, int32_t* __restrict__ out) {
  int64_t keep = vocab;
  if (top_k > 0 && top_k < keep) keep = top_k;
  if (top_p < 1.0f) {
    // Smallest prefix whose mass reaches top_p of the kept mass.
    const int64_t last = search(cum, keep, static_cast<double>(top_p) * cum[keep - 1], false);
    keep = last + 1 < keep ? last + 1 : keep;
  }
  const double r = static_cast<double>(uniform) * cum[keep - 1];
  int64_t i = search(cum, keep, r, true);
  if (i >= keep) i = keep - 1;  // uniform * total rounded up to total
  *out = sorted_ids[i];
}

size_t align_up(size_t v) { return (v + 255) & ~size_t{255}; }

}  // namespace

Status argmax_rows(const float* x, int64_t rows, int64_t n, int32_t* out) {
  const char* op = "argmax";
  TANDEM_CUDA_REQUIRE(op, rows >= 0 && n >= 0, "negative size");
  TANDEM_CUDA_REQUIRE(op, rows <= INT32_MAX && n <= INT32_MAX, "sizes over 2^31-1");
  if (rows == 0) return Status::ok();
  TANDEM_CUDA_REQUIRE(op, out, "null pointer");
  if (n == 0) {  // empty rows: index 0, as cpu::argmax
    TANDEM_CUDA_CHECK(op, cudaMemsetAsync(out, 0, sizeof(int32_t) * rows, stream()));
    return Status::ok();
  }
  TANDEM_CUDA_REQUIRE(op, x, "null pointer");
  argmax_rows_kernel<<<static_cast<unsigned>(rows), kReduceThreads, 0, stream()>>>(x, n, out);
  TANDEM_CUDA_CHECK_LAUNCH(op);
  return Status::ok();
}

Result<int32_t> argmax(const float* x, int64_t n) {
  const char* op = "argmax";
  if (n <= 0) return 0;  // as cpu::argmax
  detail::Scratch result;
  TANDEM_RETURN_IF_ERROR(result.allocate(sizeof(int32_t), op));
  TANDEM_RETURN_IF_ERROR(argmax_rows(x, 1, n, result.as<int32_t>()));
  TANDEM_ASSIGN_OR_RETURN(const void* host, detail::read_back(result.get(), sizeof(int32_t), op));
  return *static_cast<const int32_t*>(host);
}

Result<int32_t> sample(const float* logits, int64_t vocab, const SamplingParams& params, float uniform,
                       float* scratch) {
  const char* op = "sample";
  TANDEM_CUDA_REQUIRE(op, vocab <= INT32_MAX, "vocab over 2^31-1");
  if (vocab <= 0) return 0;  // as cpu::sample
  if (is_greedy(params)) return argmax(logits, vocab);
  // Out-of-range top_k, top_p and uniform behave as on the CPU (top_k < 0 is
  // off, top_p <= 0 keeps one token, the draw clamps to the kept range).
  TANDEM_CUDA_REQUIRE(op, logits && scratch, "null pointer");
  const int num = static_cast<int>(vocab);
  cudaStream_t s = stream();
  float* p = scratch;                 // [vocab] unnormalised probabilities
  float* sorted_p = scratch + vocab;  // [vocab] the same, descending

  // A stable descending radix sort keeps equal probabilities in id order.
  size_t sort_bytes = 0, scan_bytes = 0;
  TANDEM_CUDA_CHECK(op, cub::DeviceRadixSort::SortPairsDescending(
                            nullptr, sort_bytes, static_cast<const float*>(nullptr), static_cast<float*>(nullptr),
                            static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), num, 0, 32, s));
  TANDEM_CUDA_CHECK(op, cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, static_cast<const double*>(nullptr),
                                                      static_cast<double*>(nullptr), num, s));
  const size_t ints = align_up(sizeof(int32_t) * vocab), doubles = align_up(sizeof(double) * vocab);
  const size_t tmp_bytes = align_up(sort_bytes > scan_bytes ? sort_bytes : scan_bytes);
  detail::Scratch work;
  TANDEM_RETURN_IF_ERROR(work.allocate(2 * doubles + 2 * ints + tmp_bytes + 256, op));
  double* wide = work.as<double>();
  double* cum = work.as<double>(doubles);
  int32_t* ids = work.as<int32_t>(2 * doubles);
  int32_t* sorted_ids = work.as<int32_t>(2 * doubles + ints);
  void* tmp = work.as<char>(2 * doubles + 2 * ints);
  int32_t* picked = work.as<int32_t>(2 * doubles + 2 * ints + tmp_bytes);

  softmax_numerators_kernel<<<1, kReduceThreads, 0, s>>>(logits, vocab, 1.0f / params.temperature, p, ids);
  TANDEM_CUDA_CHECK_LAUNCH(op);
  TANDEM_CUDA_CHECK(op, cub::DeviceRadixSort::SortPairsDescending(tmp, sort_bytes, p, sorted_p, ids, sorted_ids,
                                                                  num, 0, 32, s));
  widen_kernel<<<detail::grid_for(vocab, 256), 256, 0, s>>>(sorted_p, wide, vocab);
  TANDEM_CUDA_CHECK_LAUNCH(op);
  TANDEM_CUDA_CHECK(op, cub::DeviceScan::InclusiveSum(tmp, scan_bytes, wide, cum, num, s));
  pick_kernel<<<1, 1, 0, s>>>(cum, sorted_ids, vocab, params.top_k, params.top_p, uniform, picked);
  TANDEM_CUDA_CHECK_LAUNCH(op);
  TANDEM_ASSIGN_OR_RETURN(const void* host, detail::read_back(picked, sizeof(int32_t), op));
  return *static_cast<const int32_t*>(host);
}

}  // namespace tandem::kernels::cuda
