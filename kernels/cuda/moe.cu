// Router top-k and the permutation of (token, choice) pairs into expert order.
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cfloat>
#include <string>

#include "device_utils.cuh"

namespace tandem::kernels::cuda {
namespace {

using detail::stream;

constexpr int kGateWarps = 4;

// Best (value, index) of the warp; ties go to the lower index.
__device__ __forceinline__ void warp_argmax(float& v, int& idx) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
    if (ov > v || (ov == v && oi < idx)) {
      v = ov;
      idx = oi;
    }
  }
}

struct GateArgs {
  int64_t n;
  int num_experts;
  int top_k;
  bool sigmoid;
  bool renormalize;
  float routed_scaling;
  const float* bias;
  int n_group;
  int topk_group;
};

// One warp per token. Shared memory per warp: sel[E] (selection score, biased
// and group-masked) and raw[E] (the unbiased score the weights come from).
__global__ void gate_kernel(const float* __restrict__ logits, int32_t* __restrict__ topk_idx,
                            float* __restrict__ topk_w, GateArgs a) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kGateWarps + warp;
  if (t >= a.n) return;  // whole warps only; no block barriers below
  const int E = a.num_experts;
  float* sel = smem + warp * 2 * E;
  float* raw = sel + E;
  const float* x = logits + t * E;

  if (a.sigmoid) {
    for (int e = lane; e < E; e += 32) raw[e] = 1.0f / (1.0f + expf(-x[e]));
  } else {
    float mx = -INFINITY;
    for (int e = lane; e < E; e += 32) mx = fmaxf(mx, x[e]);
    mx = detail::warp_max(mx);
    float sum = 0.0f;
    for (int e = lane; e < E; e += 32) {
      const float p = expf(x[e] - mx);
      raw[e] = p;
      sum += p;
    }
    sum = detail::warp_sum(sum);
    for (int e = lane; e < E; e += 32) raw[e] /= sum;  // a division, as the CPU reference
  }
  for (int e = lane; e < E; e += 32) sel[e] = raw[e] + (a.bias ? a.bias[e] : 0.0f);
  __syncwarp();

  if (a.n_group > 1) {
    // DeepSeek-V3 grouped selection (for either scoring, as cpu::moe_gate_topk):
    // a group's score is the sum of its two best biased scores (one if the group
    // has a single expert). Lane g scores group g (n_group <= 32).
    const int gs = E / a.n_group;
    float gscore = -INFINITY;
    if (lane < a.n_group) {
      float b1 = -INFINITY, b2 = -INFINITY;
      for (int e = lane * gs; e < (lane + 1) * gs; ++e) {
        const float s = sel[e];
        if (s > b1) {
          b2 = b1;
          b1 = s;
        } else if (s > b2) {
          b2 = s;
        }
      }
      gscore = gs >= 2 ? b1 + b2 : b1;
    }
    unsigned kept = 0;
    for (int r = 0; r < a.topk_group; ++r) {
      float v = gscore;
      int gi = lane < a.n_group ? lane : INT32_MAX;
      warp_argmax(v, gi);
      if (gi < 32) kept |= 1u << gi;
      if (lane == gi) gscore = -INFINITY;
    }
    // Experts of dropped groups score 0.0, not -inf, as HF's masked_fill(0.0).
    for (int e = lane; e < E; e += 32) {
      if (!((kept >> (e / gs)) & 1u)) sel[e] = 0.0f;
    }
    __syncwarp();
  }

  // k rounds of warp argmax; lane j keeps the weight of choice j (top_k <= 32).
  float mine = 0.0f;
  for (int j = 0; j < a.top_k; ++j) {
    float v = -INFINITY;
    int best = INT32_MAX;
    for (int e = lane; e < E; e += 32) {
      if (sel[e] > v) {  // strict: the lowest index of this lane's ties
        v = sel[e];
        best = e;
      }
    }
    warp_argmax(v, best);
    if (best == INT32_MAX) best = 0;  // only if every score is -inf or NaN
    if (lane == j) mine = raw[best];
    if (lane == 0) topk_idx[t * a.top_k + j] = best;
    __syncwarp();
    if (lane == 0) sel[best] = -INFINITY;
    __syncwarp();
  }
  if (a.renormalize) {
    // HF's DeepSeek-V3 guards the division with 1e-20; Mixtral/Qwen do not.
    const float sum = detail::warp_sum(lane < a.top_k ? mine : 0.0f);
    mine /= a.sigmoid ? sum + 1e-20f : sum;
  }
  if (lane < a.top_k) topk_w[t * a.top_k + lane] = mine * a.routed_scaling;
}

__global__ void iota_kernel(int32_t* out, int total) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) out[i] = i;
}

// Row r of the sorted order came from pair src[r] = t * k + choice. The offsets
// are lower bounds of each expert id in the sorted keys.
__global__ void permute_finish_kernel(const int32_t* __restrict__ sorted_expert, const int32_t* __restrict__ src,
                                      const float* __restrict__ topk_w, int total, int k, int num_experts,
                                      int32_t* __restrict__ offsets, int32_t* __restrict__ row_token,
                                      float* __restrict__ row_weight) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < total) {
    const int p = src[i];
    row_token[i] = p / k;
    row_weight[i] = topk_w[p];
  }
  if (i <= num_experts) {
    int lo = 0, hi = total;
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (sorted_expert[mid] < i) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    offsets[i] = lo;
  }
}

size_t align_up(size_t v) { return (v + 255) & ~size_t{255}; }

}  // namespace

Status moe_gate_topk(const float* logits, int32_t* topk_idx, float* topk_w, int64_t n, const GateParams& p) {
  const char* op = "moe_gate_topk";
  TANDEM_CUDA_REQUIRE(op, n >= 0, "negative n");
  TANDEM_CUDA_REQUIRE(op, p.num_experts > 0 && p.num_experts <= 4096, "num_experts must be in [1, 4096]");
  TANDEM_CUDA_REQUIRE(op, p.top_k > 0 && p.top_k <= 32 && p.top_k <= p.num_experts,
                      "top_k must be in [1, min(32, num_experts)]");
  if (p.n_group > 1) {
    TANDEM_CUDA_REQUIRE(op, p.n_group <= 32 && p.num_experts % p.n_group == 0,
                        "n_group must divide num_experts and be <= 32");
    TANDEM_CUDA_REQUIRE(op, p.topk_group >= 1, "topk_group must be >= 1");
  }
  TANDEM_CUDA_REQUIRE(op, n <= INT32_MAX, "too many tokens");
  if (n == 0) return Status::ok();
  TANDEM_CUDA_REQUIRE(op, logits && topk_idx && topk_w, "null pointer");
  GateArgs a{};
  a.n = n;
  a.num_experts = static_cast<int>(p.num_experts);
  a.top_k = static_cast<int>(p.top_k);
  a.sigmoid = p.scoring == GateScoring::kSigmoid;
  a.renormalize = p.renormalize;
  a.routed_scaling = p.routed_scaling;
  a.bias = p.correction_bias;
  a.n_group = static_cast<int>(std::max<int64_t>(p.n_group, 1));
  a.topk_group = static_cast<int>(std::min(p.topk_group, p.n_group));  // more groups than exist: all stay
  const size_t smem = sizeof(float) * 2 * kGateWarps * p.num_experts;  // <= 128 KiB
  TANDEM_CUDA_CHECK(op, cudaFuncSetAttribute(gate_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(smem)));
  gate_kernel<<<static_cast<unsigned>(detail::ceil_div(n, kGateWarps)), kGateWarps * 32, smem, stream()>>>(
      logits, topk_idx, topk_w, a);
  TANDEM_CUDA_CHECK_LAUNCH(op);
  return Status::ok();
}

// A stable LSD radix sort on the expert id alone is exactly the counting sort the
// contract asks for: equal experts keep pair order, i.e. token order.
Status moe_permute(const int32_t* topk_idx, const float* topk_w, int64_t n, int64_t k, int64_t num_experts,
                   int32_t* expert_offsets, int32_t* row_token, float* row_weight) {
  const char* op = "moe_permute";
  TANDEM_CUDA_REQUIRE(op, n >= 0 && k >= 0 && num_experts >= 0, "negative size");
  TANDEM_CUDA_REQUIRE(op, n * k <= INT32_MAX && num_experts < INT32_MAX, "sizes over 2^31-1");
  TANDEM_CUDA_REQUIRE(op, expert_offsets, "null expert_offsets");
  const int total = static_cast<int>(n * k);
  const int E = static_cast<int>(num_experts);
  cudaStream_t s = stream();
  if (total == 0) {
    TANDEM_CUDA_CHECK(op, cudaMemsetAsync(expert_offsets, 0, sizeof(int32_t) * (E + 1), s));
    return Status::ok();
  }
  TANDEM_CUDA_REQUIRE(op, topk_idx && topk_w && row_token && row_weight, "null pointer");
  int end_bit = 1;
  while (end_bit < 31 && (int64_t{1} << end_bit) < num_experts) ++end_bit;

  size_t cub_bytes = 0;
  TANDEM_CUDA_CHECK(op, cub::DeviceRadixSort::SortPairs(nullptr, cub_bytes, topk_idx, static_cast<int32_t*>(nullptr),
                                                        static_cast<const int32_t*>(nullptr),
                                                        static_cast<int32_t*>(nullptr), total, 0, end_bit, s));
  const size_t ints = align_up(sizeof(int32_t) * total);
  detail::Scratch scratch;
  TANDEM_RETURN_IF_ERROR(scratch.allocate(3 * ints + cub_bytes, op));
  int32_t* keys_out = scratch.as<int32_t>();
  int32_t* src_in = scratch.as<int32_t>(ints);
  int32_t* src_out = scratch.as<int32_t>(2 * ints);
  void* cub_tmp = scratch.as<char>(3 * ints);

  iota_kernel<<<detail::grid_for(total, 256), 256, 0, s>>>(src_in, total);
  TANDEM_CUDA_CHECK_LAUNCH(op);
  TANDEM_CUDA_CHECK(op, cub::DeviceRadixSort::SortPairs(cub_tmp, cub_bytes, topk_idx, keys_out, src_in, src_out,
                                                        total, 0, end_bit, s));
  const int items = std::max(total, E + 1);
  permute_finish_kernel<<<static_cast<unsigned>(detail::ceil_div(items, 256)), 256, 0, s>>>(
      keys_out, src_out, topk_w, total, static_cast<int>(k), E, expert_offsets, row_token, row_weight);
  TANDEM_CUDA_CHECK_LAUNCH(op);
  return Status::ok();
}

}  // namespace tandem::kernels::cuda
