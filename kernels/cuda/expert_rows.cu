// grouped_swiglu_device: the experts' SwiGLU over few rows per expert, with the
// per-expert row ranges read on the device.
//
// Decode sends a handful of rows to each expert, so an expert's FFN is a
// weight-streaming matrix-vector product: each weight row is read from memory
// once and multiplied into every row routed to the expert while it is in
// registers. One block handles one expert and a tile of output columns; a
// block whose expert got no rows returns at once, so its weights are never
// read. Nothing about the routing reaches the host, so a layer that runs this
// can be captured in a CUDA graph whole.
#include "device_utils.cuh"

namespace tandem::kernels::cuda {
namespace {

using detail::dev;
using detail::device_t;
using detail::from_float;
using detail::stream;
using detail::to_float;
using detail::warp_sum;

constexpr int kWarps = 8;
constexpr int kColsPerWarp = 4;
constexpr int kColsPerBlock = kWarps * kColsPerWarp;
// Rows multiplied into one pass over a weight row. An expert with more rows
// streams its weights once per kRowTile rows (from L2 when they fit), which is
// why the runner uses this kernel only for decode-sized batches.
constexpr int kRowTile = 8;

// 16-byte vectors: 4 floats or 8 BF16.
template <typename T>
struct Vec16;
template <>
struct Vec16<float> {
  static constexpr int kElems = 4;
  __device__ static void load(const float* p, float (&v)[4]) {
    const float4 q = __ldg(reinterpret_cast<const float4*>(p));
    v[0] = q.x;
    v[1] = q.y;
    v[2] = q.z;
    v[3] = q.w;
  }
};
template <>
struct Vec16<__nv_bfloat16> {
  static constexpr int kElems = 8;
  __device__ static void load(const __nv_bfloat16* p, float (&v)[8]) {
    const uint4 q = __ldg(reinterpret_cast<const uint4*>(p));
    const uint32_t words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      // Low half first: little-endian, element 2i is the low 16 bits.
      v[2 * i] = __uint_as_float(words[i] << 16);
      v[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
  }
};

__device__ __forceinline__ int64_t clamp_row(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// The three weight pointers of one expert, in the device type.
template <typename D>
struct DeviceExpert {
  const D* gate;
  const D* up;
  const D* down;
};

// out[r, col] for the expert's rows r and this block's columns col:
//   kGlu:  silu(in[r]·gate[col]) * (in[r]·up[col])   (in [rows, K], gate/up [N, K])
//   !kGlu: in[r]·down[col]                          (in [rows, K], down [N, K])
// The two dot products of kGlu are rounded to D before the SiLU, as the cuBLAS
// path (GEMMs into D, then silu_mul) does.
//
// A warp owns kColsPerWarp columns and works on kCols of them at once (all
// four for down, two for gate/up, which reads two weight rows per column), so
// each activation vector is loaded and unpacked once per k-step and used for
// 4 weight rows: the activations (L1/L2 traffic) stay well below the weights
// (HBM traffic) even at 8 rows per expert and Mixtral's K of 14336.
template <typename D, bool kGlu>
__global__ void __launch_bounds__(kWarps * 32)
    expert_rows_kernel(const D* __restrict__ in, D* __restrict__ out, const int32_t* __restrict__ offsets,
                       const DeviceExpert<D>* __restrict__ experts, int64_t K, int64_t N, int64_t row_capacity) {
  using V = Vec16<D>;
  constexpr int kVec = V::kElems;
  constexpr int kCols = kGlu ? 2 : 4;        // columns in registers at once
  constexpr int kMats = kGlu ? 2 : 1;        // weight matrices per column
  static_assert(kColsPerWarp % kCols == 0, "a warp's columns come in groups of kCols");
  const int64_t e = blockIdx.y;
  // Offsets come from the device, so they are clamped rather than trusted.
  const int64_t begin = clamp_row(offsets[e], 0, row_capacity);
  const int64_t end = clamp_row(offsets[e + 1], begin, row_capacity);
  if (end <= begin) return;
  const DeviceExpert<D> ex = experts[e];
  const D* wa = kGlu ? ex.gate : ex.down;
  const D* wb = kGlu ? ex.up : nullptr;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kColsPerBlock;
  const int64_t cols = N - col0 < kColsPerBlock ? N - col0 : kColsPerBlock;
  if (wa == nullptr || (kGlu && wb == nullptr)) {
    // Rows routed to an expert without weights: zeros, not a fault (the host
    // cannot be told without a synchronisation; the op's contract forbids it).
    for (int64_t r = begin; r < end; ++r)
      for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[r * N + col0 + c] = from_float<D>(0.0f);
    return;
  }
  const bool vectorised = K % kVec == 0 && aligned16(in) && aligned16(wa) && (!kGlu || aligned16(wb));
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const D* mats[2] = {wa, wb};
  for (int64_t r0 = begin; r0 < end; r0 += kRowTile) {
    const int rows = static_cast<int>(end - r0 < kRowTile ? end - r0 : kRowTile);
    const D* x0 = in + r0 * K;
    for (int g = 0; g < kColsPerWarp; g += kCols) {
      // This warp's column group; columns past N are clamped to the last one
      // (computed, not stored) so every lane runs the same loop.
      const int64_t first = col0 + warp * kColsPerWarp + g;
      if (first >= col0 + cols) break;  // uniform across the warp
      const D* w[kCols][kMats];
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const int64_t col = first + c < col0 + cols ? first + c : col0 + cols - 1;
#pragma unroll
        for (int m = 0; m < kMats; ++m) w[c][m] = mats[m] + col * K;
      }
      float acc[kCols][kMats][kRowTile];
#pragma unroll
      for (int c = 0; c < kCols; ++c)
#pragma unroll
        for (int m = 0; m < kMats; ++m)
#pragma unroll
          for (int i = 0; i < kRowTile; ++i) acc[c][m][i] = 0.0f;
      if (vectorised) {
        for (int64_t k = static_cast<int64_t>(lane) * kVec; k < K; k += 32 * kVec) {
          float wv[kCols][kMats][kVec];
#pragma unroll
          for (int c = 0; c < kCols; ++c)
#pragma unroll
            for (int m = 0; m < kMats; ++m) V::load(w[c][m] + k, wv[c][m]);
#pragma unroll
          for (int i = 0; i < kRowTile; ++i) {
            if (i < rows) {
              float xv[kVec];
              V::load(x0 + i * K + k, xv);
#pragma unroll
              for (int c = 0; c < kCols; ++c)
#pragma unroll
                for (int m = 0; m < kMats; ++m)
#pragma unroll
                  for (int j = 0; j < kVec; ++j) acc[c][m][i] = fmaf(wv[c][m][j], xv[j], acc[c][m][i]);
            }
          }
        }
      } else {
        for (int64_t k = lane; k < K; k += 32) {
          float wv[kCols][kMats];
#pragma unroll
          for (int c = 0; c < kCols; ++c)
#pragma unroll
            for (int m = 0; m < kMats; ++m) wv[c][m] = to_float(w[c][m][k]);
#pragma unroll
          for (int i = 0; i < kRowTile; ++i) {
            if (i < rows) {
              const float xv = to_float(x0[i * K + k]);
#pragma unroll
              for (int c = 0; c < kCols; ++c)
#pragma unroll
                for (int m = 0; m < kMats; ++m) acc[c][m][i] = fmaf(wv[c][m], xv, acc[c][m][i]);
            }
          }
        }
      }
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const int64_t col = first + c;
#pragma unroll
        for (int i = 0; i < kRowTile; ++i) {
          if (i < rows) {  // uniform across the warp
            float value = warp_sum(acc[c][0][i]);
            if constexpr (kGlu) {
              const float gate = to_float(from_float<D>(value));
              const float up = to_float(from_float<D>(warp_sum(acc[c][1][i])));
              value = gate / (1.0f + expf(-gate)) * up;
            }
            if (lane == 0 && col < col0 + cols) out[(r0 + i) * N + col] = from_float<D>(value);
          }
        }
      }
    }
  }
}

template <typename T, typename W>
Status grouped_swiglu_device_impl(const T* x_perm, T* y_perm, const int32_t* expert_offsets, int64_t num_experts,
                                  const W* experts, int64_t hidden, int64_t inter, int64_t row_capacity,
                                  T* scratch) {
  using D = device_t<T>;
  static_assert(sizeof(W) == sizeof(DeviceExpert<D>), "expert weights: three device pointers");
  const char* op = "grouped_swiglu_device";
  TANDEM_CUDA_REQUIRE(op, num_experts >= 0 && hidden >= 0 && row_capacity >= 0, "negative size");
  TANDEM_CUDA_REQUIRE(op, inter > 0, "no intermediate size");
  if (num_experts == 0 || row_capacity == 0 || hidden == 0) return Status::ok();
  TANDEM_CUDA_REQUIRE(op, num_experts <= 65535, "more than 65535 experts");
  TANDEM_CUDA_REQUIRE(op, expert_offsets && experts, "null offsets or experts");
  TANDEM_CUDA_REQUIRE(op, x_perm && y_perm && scratch, "null pointer");
  const auto* table = reinterpret_cast<const DeviceExpert<D>*>(experts);
  const dim3 block(kWarps * 32);
  const dim3 up_grid(static_cast<unsigned>(detail::ceil_div(inter, kColsPerBlock)),
                     static_cast<unsigned>(num_experts));
  expert_rows_kernel<D, true><<<up_grid, block, 0, stream()>>>(dev(x_perm), dev(scratch), expert_offsets, table,
                                                                hidden, inter, row_capacity);
  TANDEM_CUDA_CHECK_LAUNCH(op);
  const dim3 down_grid(static_cast<unsigned>(detail::ceil_div(hidden, kColsPerBlock)),
                       static_cast<unsigned>(num_experts));
  // The down projection reads the table's `down` through the same struct.
  expert_rows_kernel<D, false><<<down_grid, block, 0, stream()>>>(dev(static_cast<const T*>(scratch)), dev(y_perm),
                                                                  expert_offsets, table, inter, hidden,
                                                                  row_capacity);
  TANDEM_CUDA_CHECK_LAUNCH(op);
  return Status::ok();
}

}  // namespace

Status grouped_swiglu_device(const float* x_perm, float* y_perm, const int32_t* expert_offsets, int64_t num_experts,
                             const ExpertWeights* experts, int64_t hidden, int64_t inter, int64_t row_capacity,
                             float* scratch) {
  return grouped_swiglu_device_impl(x_perm, y_perm, expert_offsets, num_experts, experts, hidden, inter,
                                    row_capacity, scratch);
}
Status grouped_swiglu_device(const Bf16* x_perm, Bf16* y_perm, const int32_t* expert_offsets, int64_t num_experts,
                             const ExpertWeightsBf16* experts, int64_t hidden, int64_t inter, int64_t row_capacity,
                             Bf16* scratch) {
  return grouped_swiglu_device_impl(x_perm, y_perm, expert_offsets, num_experts, experts, hidden, inter,
                                    row_capacity, scratch);
}

}  // namespace tandem::kernels::cuda
