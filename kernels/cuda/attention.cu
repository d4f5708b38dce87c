// Causal prefill attention over a contiguous sequence and paged attention over
// block tables. Both use the online softmax (running max m, running sum l,
// rescaled accumulator) in FP32; inputs may be BF16. SIMT math, no tensor
// cores yet: correctness and the memory access pattern come first.
#include <algorithm>
#include <cfloat>

#include "device_utils.cuh"

namespace tandem::kernels::cuda {
namespace {

using detail::dev;
using detail::from_float;
using detail::stream;
using detail::to_float;

// ---- Prefill ----------------------------------------------------------------
// Block = 32 query rows of one query head; 4 threads per row. Each tile of 32
// keys is staged in shared memory once and used by all 32 rows. Thread `sub` of
// a row scores keys sub, sub+4, ... and owns output features sub, sub+4, ...

constexpr int kPrefillRows = 32;
constexpr int kPrefillKeys = 32;
constexpr int kPrefillThreads = kPrefillRows * 4;

size_t prefill_smem_bytes(int d) {
  const int ld = d + 1;  // +1: rows of K read at the same feature hit different banks
  return sizeof(float) * (static_cast<size_t>(kPrefillRows) * ld + 2u * kPrefillKeys * ld +
                          kPrefillRows * (kPrefillKeys + 1));
}

template <typename T, int kMaxD>
__global__ void __launch_bounds__(kPrefillThreads)
    prefill_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ out,
                   int n, int hq, int hkv, int d, float scale) {
  extern __shared__ float smem[];
  const int ld = d + 1;
  float* qs = smem;                       // [rows][ld], pre-scaled
  float* ks = qs + kPrefillRows * ld;     // [keys][ld]
  float* vs = ks + kPrefillKeys * ld;     // [keys][ld]
  float* ps = vs + kPrefillKeys * ld;     // [rows][keys + 1] probabilities
  const int h = blockIdx.y;
  const int kvh = h / (hq / hkv);
  const int q0 = blockIdx.x * kPrefillRows;
  const int r = threadIdx.x >> 2;
  const int sub = threadIdx.x & 3;
  const int qi = q0 + r;

  for (int idx = threadIdx.x; idx < kPrefillRows * d; idx += blockDim.x) {
    const int rr = idx / d, f = idx % d, row = q0 + rr;
    qs[rr * ld + f] = row < n ? to_float(q[(static_cast<int64_t>(row) * hq + h) * d + f]) * scale : 0.0f;
  }

  constexpr int kPer = kMaxD / 4;
  constexpr int kKeysPer = kPrefillKeys / 4;
  float acc[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) acc[i] = 0.0f;
  float m = -INFINITY, l = 0.0f;

  const int key_end = min(n, q0 + kPrefillRows);  // causal: the last row sees keys < q0 + rows
  for (int j0 = 0; j0 < key_end; j0 += kPrefillKeys) {
    __syncthreads();  // the previous tile is consumed (and Q is staged)
    for (int idx = threadIdx.x; idx < kPrefillKeys * d; idx += blockDim.x) {
      const int jj = idx / d, f = idx % d, key = j0 + jj;
      float kv = 0.0f, vv = 0.0f;
      if (key < n) {
        const int64_t off = (static_cast<int64_t>(key) * hkv + kvh) * d + f;
        kv = to_float(k[off]);
        vv = to_float(v[off]);
      }
      ks[jj * ld + f] = kv;
      vs[jj * ld + f] = vv;
    }
    __syncthreads();

    float s[kKeysPer];
#pragma unroll
    for (int i = 0; i < kKeysPer; ++i) s[i] = 0.0f;
    for (int f = 0; f < d; ++f) {
      const float qf = qs[r * ld + f];
#pragma unroll
      for (int i = 0; i < kKeysPer; ++i) s[i] += qf * ks[(sub + 4 * i) * ld + f];
    }
    float tmax = -INFINITY;
#pragma unroll
    for (int i = 0; i < kKeysPer; ++i) {
      const int key = j0 + sub + 4 * i;
      if (key > qi || key >= n) s[i] = -INFINITY;
      tmax = fmaxf(tmax, s[i]);
    }
    // The 4 threads of a row are adjacent lanes of one warp.
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));
    const float m_new = fmaxf(m, tmax);
    float psum = 0.0f;
#pragma unroll
    for (int i = 0; i < kKeysPer; ++i) {
      // m_new is -inf only for rows past the end, which see no key at all.
      const float p = m_new == -INFINITY ? 0.0f : expf(s[i] - m_new);
      ps[r * (kPrefillKeys + 1) + sub + 4 * i] = p;
      psum += p;
    }
    psum += __shfl_xor_sync(0xffffffffu, psum, 1);
    psum += __shfl_xor_sync(0xffffffffu, psum, 2);
    const float alpha = m == -INFINITY ? 0.0f : expf(m - m_new);
    l = l * alpha + psum;
    m = m_new;
    __syncwarp();
#pragma unroll
    for (int i = 0; i < kPer; ++i) acc[i] *= alpha;
    for (int jj = 0; jj < kPrefillKeys; ++jj) {
      const float p = ps[r * (kPrefillKeys + 1) + jj];
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const int f = sub + 4 * i;
        if (f < d) acc[i] += p * vs[jj * ld + f];
      }
    }
  }
  if (qi < n) {
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    T* o = out + (static_cast<int64_t>(qi) * hq + h) * d;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int f = sub + 4 * i;
      if (f < d) o[f] = from_float<T>(acc[i] * inv);
    }
  }
}

template <typename T, int kMaxD>
Status launch_prefill(const char* op, const T* q, const T* k, const T* v, T* out, int n, int hq, int hkv, int d,
                      float scale) {
  using DT = detail::device_t<T>;
  const size_t smem = prefill_smem_bytes(d);
  auto kernel = prefill_kernel<DT, kMaxD>;
  TANDEM_CUDA_CHECK(op, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(smem)));
  dim3 grid(static_cast<unsigned>(detail::ceil_div(n, kPrefillRows)), static_cast<unsigned>(hq));
  kernel<<<grid, kPrefillThreads, smem, stream()>>>(dev(q), dev(k), dev(v), dev(out), n, hq, hkv, d, scale);
  TANDEM_CUDA_CHECK_LAUNCH(op);
  return Status::ok();
}

template <typename T>
Status prefill_impl(const T* q, const T* k, const T* v, T* out, int64_t n, int64_t hq, int64_t hkv, int64_t d,
                    float scale) {
  const char* op = "attention_prefill";
  TANDEM_CUDA_REQUIRE(op, n >= 0 && hq >= 0 && hkv >= 0 && d >= 0, "negative size");
  if (n == 0 || hq == 0 || d == 0) return Status::ok();
  TANDEM_CUDA_REQUIRE(op, hkv > 0 && hq % hkv == 0, "hq must be a multiple of hkv");
  TANDEM_CUDA_REQUIRE(op, d <= 256, "head_dim over 256 is not supported");
  TANDEM_CUDA_REQUIRE(op, n <= INT32_MAX && hq <= 65535, "sizes over the launch limits");
  TANDEM_CUDA_REQUIRE(op, q && k && v && out, "null pointer");
  const int ni = static_cast<int>(n), hqi = static_cast<int>(hq), hkvi = static_cast<int>(hkv),
            di = static_cast<int>(d);
  if (d <= 64) return launch_prefill<T, 64>(op, q, k, v, out, ni, hqi, hkvi, di, scale);
  if (d <= 128) return launch_prefill<T, 128>(op, q, k, v, out, ni, hqi, hkvi, di, scale);
  return launch_prefill<T, 256>(op, q, k, v, out, ni, hqi, hkvi, di, scale);
}

// ---- Paged ------------------------------------------------------------------
// Block = (token, kv head, chunk of up to 8 query heads of its group, context
// split). Per tile of 64 positions: each warp scores whole keys (lanes split the
// head dim, so a K row is one coalesced read) against every query head of the
// chunk; one warp per head updates the softmax state; then threads split the
// head dim (and, for small heads, the keys) to accumulate V rows, again read once
// for all heads of the chunk.

constexpr int kPagedThreads = 128;
constexpr int kPagedWarps = kPagedThreads / 32;
constexpr int kPagedTile = 64;
constexpr int kHeadsPerBlock = 8;

struct PagedArgs {
  int hq;
  int group;        // hq / hkv
  int head_chunks;  // ceil(group / kHeadsPerBlock)
  int hkv;
  int d;
  int block_size;
  int64_t max_blocks_per_seq;
  const int32_t* block_tables;
  const int32_t* seq_of_token;
  const int32_t* ctx_len;
  float scale;
  int chunk;   // positions per split
  int splits;  // 1: write `out` directly; else partials for the combine kernel
  float* part_acc;   // [tokens, hq, splits, d] unnormalised
  float2* part_ml;   // [tokens, hq, splits] (running max, running sum)
};

template <typename T, int kMaxD>
__global__ void __launch_bounds__(kPagedThreads)
    paged_kernel(const T* __restrict__ q, T* __restrict__ out, const T* __restrict__ kc, const T* __restrict__ vc,
                 PagedArgs a) {
  constexpr int kKPer = kMaxD / 32;               // K features per lane
  constexpr int kVPer = (kMaxD + kPagedThreads - 1) / kPagedThreads;  // V features per thread
  __shared__ float q_s[kHeadsPerBlock][kMaxD];
  __shared__ float s_s[kPagedTile][kHeadsPerBlock + 1];  // +1: column reads by one warp avoid conflicts
  __shared__ int64_t row_s[kPagedTile];                  // element offset of each position's K/V row
  __shared__ float m_s[kHeadsPerBlock], l_s[kHeadsPerBlock], alpha_s[kHeadsPerBlock];
  __shared__ float red_s[kHeadsPerBlock][kPagedThreads];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t t = blockIdx.x;
  const int kvh = blockIdx.y / a.head_chunks;
  const int g0 = (blockIdx.y % a.head_chunks) * kHeadsPerBlock;
  const int gc = min(kHeadsPerBlock, a.group - g0);
  const int h0 = kvh * a.group + g0;
  const int d = a.d;
  const int seq = a.seq_of_token[t];
  const int ctx = a.ctx_len[t];
  const int begin = blockIdx.z * a.chunk;
  const int end = min(ctx, begin + a.chunk);

  // Zero-fill so the unused tail of q_s never turns 0 * garbage into NaN.
  for (int idx = tid; idx < kHeadsPerBlock * kMaxD; idx += kPagedThreads) {
    const int g = idx / kMaxD, f = idx % kMaxD;
    q_s[g][f] = (g < gc && f < d) ? to_float(q[(t * a.hq + h0 + g) * d + f]) * a.scale : 0.0f;
  }
  if (tid < kHeadsPerBlock) {
    m_s[tid] = -INFINITY;
    l_s[tid] = 0.0f;
  }
  __syncthreads();  // an empty range reads l_s without entering the tile loop
  // PV mapping: for small heads, 128/d groups of threads take alternate keys.
  const int key_groups = (d <= kPagedThreads && kPagedThreads % d == 0) ? kPagedThreads / d : 1;
  const int fthreads = kPagedThreads / key_groups;
  const int kg = tid / fthreads, fbase = tid % fthreads;
  float acc[kHeadsPerBlock][kVPer];
#pragma unroll
  for (int g = 0; g < kHeadsPerBlock; ++g)
#pragma unroll
    for (int i = 0; i < kVPer; ++i) acc[g][i] = 0.0f;
  const int32_t* table = a.block_tables + static_cast<int64_t>(seq) * a.max_blocks_per_seq;

  for (int tile0 = begin; tile0 < end; tile0 += kPagedTile) {
    const int tl = min(kPagedTile, end - tile0);
    if (tid < tl) {
      const int pos = tile0 + tid;
      const int64_t blk = table[pos / a.block_size];
      row_s[tid] = ((blk * a.block_size + pos % a.block_size) * a.hkv + kvh) * d;
    }
    __syncthreads();

    for (int jj = warp; jj < tl; jj += kPagedWarps) {
      const T* kr = kc + row_s[jj];
      float kreg[kKPer];
#pragma unroll
      for (int i = 0; i < kKPer; ++i) {
        const int f = lane + 32 * i;
        kreg[i] = f < d ? to_float(kr[f]) : 0.0f;
      }
#pragma unroll
      for (int g = 0; g < kHeadsPerBlock; ++g) {
        if (g < gc) {
          float part = 0.0f;
#pragma unroll
          for (int i = 0; i < kKPer; ++i) part += q_s[g][lane + 32 * i] * kreg[i];
          part = detail::warp_sum(part);
          if (lane == 0) s_s[jj][g] = part;
        }
      }
    }
    __syncthreads();

    for (int g = warp; g < gc; g += kPagedWarps) {
      float mx = -INFINITY;
      for (int jj = lane; jj < tl; jj += 32) mx = fmaxf(mx, s_s[jj][g]);
      mx = detail::warp_max(mx);
      const float m_old = m_s[g];
      const float m_new = fmaxf(m_old, mx);
      float sum = 0.0f;
      for (int jj = lane; jj < tl; jj += 32) {
        const float p = expf(s_s[jj][g] - m_new);
        s_s[jj][g] = p;
        sum += p;
      }
      sum = detail::warp_sum(sum);
      if (lane == 0) {
        const float alpha = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
        alpha_s[g] = alpha;
        l_s[g] = l_s[g] * alpha + sum;
        m_s[g] = m_new;
      }
    }
    __syncthreads();

#pragma unroll
    for (int g = 0; g < kHeadsPerBlock; ++g) {
      const float alpha = g < gc ? alpha_s[g] : 0.0f;
#pragma unroll
      for (int i = 0; i < kVPer; ++i) acc[g][i] *= alpha;
    }
    for (int jj = kg; jj < tl; jj += key_groups) {
      const T* vr = vc + row_s[jj];
#pragma unroll
      for (int i = 0; i < kVPer; ++i) {
        const int f = fbase + fthreads * i;
        if (f < d) {
          const float vv = to_float(vr[f]);
#pragma unroll
          for (int g = 0; g < kHeadsPerBlock; ++g) {
            if (g < gc) acc[g][i] += s_s[jj][g] * vv;
          }
        }
      }
    }
    __syncthreads();  // row_s and s_s are rewritten by the next tile
  }

  if (key_groups > 1) {  // then kVPer == 1: fold the key groups onto kg == 0
#pragma unroll
    for (int g = 0; g < kHeadsPerBlock; ++g) red_s[g][tid] = acc[g][0];
    __syncthreads();
    if (kg == 0) {
#pragma unroll
      for (int g = 0; g < kHeadsPerBlock; ++g)
        for (int k2 = 1; k2 < key_groups; ++k2) acc[g][0] += red_s[g][k2 * fthreads + fbase];
    }
  }
  if (kg != 0) return;
  for (int g = 0; g < gc; ++g) {
    const int64_t th = t * a.hq + h0 + g;
    if (a.splits == 1) {
      const float l = l_s[g];
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // ctx 0: zeros
#pragma unroll
      for (int i = 0; i < kVPer; ++i) {
        const int f = fbase + fthreads * i;
        if (f < d) out[th * d + f] = from_float<T>(acc[g][i] * inv);
      }
    } else {
      const int64_t slot = th * a.splits + blockIdx.z;
#pragma unroll
      for (int i = 0; i < kVPer; ++i) {
        const int f = fbase + fthreads * i;
        if (f < d) a.part_acc[slot * d + f] = acc[g][i];
      }
      if (tid == 0) a.part_ml[slot] = make_float2(m_s[g], l_s[g]);
    }
  }
}

// Merges the splits of one (token, head): rescale each partial by exp(m_s - M).
template <typename T>
__global__ void paged_combine_kernel(const float* __restrict__ part_acc, const float2* __restrict__ part_ml,
                                     T* __restrict__ out, int splits, int d) {
  const int64_t th = blockIdx.x;
  const float2* ml = part_ml + th * splits;
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, ml[s].x);
  float l = 0.0f;
  if (mx != -INFINITY) {
    for (int s = 0; s < splits; ++s) {
      if (ml[s].y > 0.0f) l += ml[s].y * expf(ml[s].x - mx);
    }
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  for (int f = threadIdx.x; f < d; f += blockDim.x) {
    float o = 0.0f;
    for (int s = 0; s < splits; ++s) {
      if (ml[s].y > 0.0f) o += part_acc[(th * splits + s) * d + f] * expf(ml[s].x - mx);
    }
    out[th * d + f] = from_float<T>(o * inv);
  }
}

template <typename T, int kMaxD>
Status launch_paged(const char* op, const T* q, T* out, const T* kc, const T* vc, int64_t n_tokens,
                    const PagedArgs& args) {
  using DT = detail::device_t<T>;
  dim3 grid(static_cast<unsigned>(n_tokens), static_cast<unsigned>(args.hkv * args.head_chunks),
            static_cast<unsigned>(args.splits));
  paged_kernel<DT, kMaxD><<<grid, kPagedThreads, 0, stream()>>>(dev(q), dev(out), dev(kc), dev(vc), args);
  TANDEM_CUDA_CHECK_LAUNCH(op);
  if (args.splits > 1) {
    paged_combine_kernel<DT><<<static_cast<unsigned>(n_tokens * args.hq), 128, 0, stream()>>>(
        args.part_acc, args.part_ml, dev(out), args.splits, args.d);
    TANDEM_CUDA_CHECK_LAUNCH(op);
  }
  return Status::ok();
}

template <typename T, typename Cache>
Status paged_impl(const T* q, T* out, int64_t n_tokens, int64_t hq, const Cache& cache, const int32_t* block_tables,
                  int64_t max_blocks_per_seq, const int32_t* seq_of_token, const int32_t* ctx_len, float scale) {
  const char* op = "attention_paged";
  const int64_t hkv = cache.kv_heads, d = cache.head_dim, bs = cache.block_size;
  TANDEM_CUDA_REQUIRE(op, n_tokens >= 0 && hq >= 0 && hkv >= 0 && d >= 0 && max_blocks_per_seq >= 0,
                      "negative size");
  if (n_tokens == 0 || hq == 0 || d == 0) return Status::ok();
  TANDEM_CUDA_REQUIRE(op, hkv > 0 && hq % hkv == 0, "hq must be a multiple of kv_heads");
  TANDEM_CUDA_REQUIRE(op, bs > 0, "block_size must be positive");
  TANDEM_CUDA_REQUIRE(op, d <= 256, "head_dim over 256 is not supported");
  const int64_t max_ctx = max_blocks_per_seq * bs;
  TANDEM_CUDA_REQUIRE(op, n_tokens <= INT32_MAX && max_ctx <= INT32_MAX && bs <= INT32_MAX,
                      "sizes over 2^31-1");
  if (n_tokens == 0) return Status::ok();
  TANDEM_CUDA_REQUIRE(op, q && out && cache.k && cache.v && seq_of_token && ctx_len, "null pointer");
  TANDEM_CUDA_REQUIRE(op, block_tables || max_blocks_per_seq == 0, "null block_tables");

  PagedArgs args{};
  args.hq = static_cast<int>(hq);
  args.group = static_cast<int>(hq / hkv);
  args.head_chunks = static_cast<int>(detail::ceil_div(args.group, kHeadsPerBlock));
  args.hkv = static_cast<int>(hkv);
  args.d = static_cast<int>(d);
  args.block_size = static_cast<int>(bs);
  args.max_blocks_per_seq = max_blocks_per_seq;
  args.block_tables = block_tables;
  args.seq_of_token = seq_of_token;
  args.ctx_len = ctx_len;
  args.scale = scale;
  TANDEM_CUDA_REQUIRE(op, hkv * args.head_chunks <= 65535, "too many kv heads");

  // Split the context only when (token, head) blocks alone leave SMs idle: two
  // blocks per SM is the target, and no split goes below 256 positions.
  TANDEM_ASSIGN_OR_RETURN(int sms, detail::sm_count(op));
  const int64_t base_blocks = n_tokens * hkv * args.head_chunks;
  int64_t splits = 1;
  if (base_blocks < 2 * sms && max_ctx > 256) {
    splits = std::min(detail::ceil_div(2 * sms, base_blocks), detail::ceil_div(max_ctx, 256));
  }
  int64_t chunk = detail::ceil_div(std::max<int64_t>(max_ctx, 1), splits);
  chunk = detail::ceil_div(chunk, kPagedTile) * kPagedTile;
  splits = std::max<int64_t>(1, detail::ceil_div(max_ctx, chunk));
  args.chunk = static_cast<int>(chunk);
  args.splits = static_cast<int>(splits);

  detail::Scratch scratch;
  if (splits > 1) {
    const size_t slots = static_cast<size_t>(n_tokens * hq * splits);
    const size_t acc_bytes = slots * d * sizeof(float);
    TANDEM_RETURN_IF_ERROR(scratch.allocate(acc_bytes + slots * sizeof(float2), op));
    args.part_acc = scratch.as<float>();
    args.part_ml = scratch.as<float2>(acc_bytes);
  }
  if (d <= 64) return launch_paged<T, 64>(op, q, out, cache.k, cache.v, n_tokens, args);
  if (d <= 128) return launch_paged<T, 128>(op, q, out, cache.k, cache.v, n_tokens, args);
  return launch_paged<T, 256>(op, q, out, cache.k, cache.v, n_tokens, args);
}

}  // namespace

Status attention_prefill(const float* q, const float* k, const float* v, float* out, int64_t n, int64_t hq,
                         int64_t hkv, int64_t d, float scale) {
  return prefill_impl(q, k, v, out, n, hq, hkv, d, scale);
}
Status attention_prefill(const Bf16* q, const Bf16* k, const Bf16* v, Bf16* out, int64_t n, int64_t hq,
                         int64_t hkv, int64_t d, float scale) {
  return prefill_impl(q, k, v, out, n, hq, hkv, d, scale);
}

Status attention_paged(const float* q, float* out, int64_t n_tokens, int64_t hq, const PagedKv& cache,
                       const int32_t* block_tables, int64_t max_blocks_per_seq, const int32_t* seq_of_token,
                       const int32_t* ctx_len, float scale) {
  return paged_impl(q, out, n_tokens, hq, cache, block_tables, max_blocks_per_seq, seq_of_token, ctx_len, scale);
}
Status attention_paged(const Bf16* q, Bf16* out, int64_t n_tokens, int64_t hq, const PagedKvBf16& cache,
                       const int32_t* block_tables, int64_t max_blocks_per_seq, const int32_t* seq_of_token,
                       const int32_t* ctx_len, float scale) {
  return paged_impl(q, out, n_tokens, hq, cache, block_tables, max_blocks_per_seq, seq_of_token, ctx_len, scale);
}

}  // namespace tandem::kernels::cuda
