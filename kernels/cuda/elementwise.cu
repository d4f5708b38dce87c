// Row copies and elementwise ops: embedding, rope_neox, kv_cache_write,
// gather_rows, scatter_add_weighted, silu_mul, dtype conversion.
#include "device_utils.cuh"

namespace tandem::kernels::cuda {
namespace {

using detail::dev;
using detail::from_float;
using detail::grid_for;
using detail::stream;
using detail::to_float;

constexpr int kBlock = 256;

// One block per output row: dst[r, :] = src[index[r], :].
template <typename T, typename I>
__global__ void gather_rows_kernel(const T* __restrict__ src, const I* __restrict__ index, T* __restrict__ dst,
                                   int64_t dim) {
  const int64_t r = blockIdx.x;
  const T* s = src + static_cast<int64_t>(index[r]) * dim;
  T* d = dst + r * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) d[i] = s[i];
}

template <typename T>
Status gather_impl(const char* op, const T* src, const int32_t* index, T* dst, int64_t rows, int64_t dim) {
  TANDEM_CUDA_REQUIRE(op, rows >= 0 && dim >= 0, "negative size");
  TANDEM_CUDA_REQUIRE(op, rows <= INT32_MAX, "too many rows");
  if (rows == 0 || dim == 0) return Status::ok();
  TANDEM_CUDA_REQUIRE(op, src && index && dst, "null pointer");
  gather_rows_kernel<<<static_cast<unsigned>(rows), kBlock, 0, stream()>>>(dev(src), index, dev(dst), dim);
  TANDEM_CUDA_CHECK_LAUNCH(op);
  return Status::ok();
}

// One thread per rotated pair (t, h, i < rot_dim/2). sincosf (not __sincosf):
// angles reach positions * inv_freq[0] = position, far outside the range where
// the fast intrinsic is accurate.
template <typename T>
__global__ void rope_neox_kernel(T* x, const int32_t* __restrict__ positions, const float* __restrict__ inv_freq,
                                 int64_t n, int64_t heads, int64_t head_dim, int64_t half, float scaling) {
  const int64_t total = n * heads * half;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx % half;
    const int64_t th = idx / half;  // t * heads + h
    const int64_t t = th / heads;
    const float angle = static_cast<float>(positions[t]) * inv_freq[i];
    float s, c;
    sincosf(angle, &s, &c);
    c *= scaling;
    s *= scaling;
    T* p = x + th * head_dim;
    const float x0 = to_float(p[i]);
    const float x1 = to_float(p[i + half]);
    p[i] = from_float<T>(x0 * c - x1 * s);
    p[i + half] = from_float<T>(x1 * c + x0 * s);
  }
}

template <typename T>
Status rope_impl(T* x, const int32_t* positions, const float* inv_freq, int64_t n, int64_t heads, int64_t head_dim,
                 int64_t rot_dim, float scaling) {
  const char* op = "rope_neox";
  TANDEM_CUDA_REQUIRE(op, n >= 0 && heads >= 0 && head_dim >= 0 && rot_dim >= 0, "negative size");
  const int64_t total = n * heads * (rot_dim / 2);
  if (total == 0) return Status::ok();
  TANDEM_CUDA_REQUIRE(op, rot_dim <= head_dim && rot_dim % 2 == 0, "rot_dim must be even and <= head_dim");
  TANDEM_CUDA_REQUIRE(op, x && positions && inv_freq, "null pointer");
  rope_neox_kernel<<<grid_for(total, kBlock), kBlock, 0, stream()>>>(dev(x), positions, inv_freq, n, heads,
                                                                    head_dim, rot_dim / 2, scaling);
  TANDEM_CUDA_CHECK_LAUNCH(op);
  return Status::ok();
}

template <typename T>
__global__ void kv_cache_write_kernel(const T* __restrict__ k, const T* __restrict__ v,
                                      const int64_t* __restrict__ slots, T* __restrict__ kc, T* __restrict__ vc,
                                      int64_t n, int64_t row) {
  const int64_t total = n * row;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t slot = slots[idx / row];
    if (slot < 0) continue;
    const int64_t dst = slot * row + idx % row;
    kc[dst] = k[idx];
    vc[dst] = v[idx];
  }
}

template <typename T, typename Cache>
Status kv_write_impl(const T* k, const T* v, const int64_t* slots, int64_t n, const Cache& cache) {
  const char* op = "kv_cache_write";
  TANDEM_CUDA_REQUIRE(op, n >= 0 && cache.kv_heads >= 0 && cache.head_dim >= 0, "negative size");
  const int64_t row = cache.kv_heads * cache.head_dim;
  if (n == 0 || row == 0) return Status::ok();
  TANDEM_CUDA_REQUIRE(op, k && v && slots && cache.k && cache.v, "null pointer");
  kv_cache_write_kernel<<<grid_for(n * row, kBlock), kBlock, 0, stream()>>>(dev(k), dev(v), slots, dev(cache.k),
                                                                           dev(cache.v), n, row);
  TANDEM_CUDA_CHECK_LAUNCH(op);
  return Status::ok();
}

// FP32 atomics: a token's k rows land in whatever order the blocks run.
template <typename T>
__global__ void scatter_add_kernel(const T* __restrict__ y, const int32_t* __restrict__ row_token,
                                   const float* __restrict__ row_weight, float* out, int64_t dim) {
  const int64_t r = blockIdx.x;
  const float w = row_weight[r];
  const T* src = y + r * dim;
  float* dst = out + static_cast<int64_t>(row_token[r]) * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) atomicAdd(dst + i, w * to_float(src[i]));
}

template <typename T>
Status scatter_impl(const T* y, const int32_t* row_token, const float* row_weight, float* out, int64_t n_rows,
                    int64_t dim) {
  const char* op = "scatter_add_weighted";
  TANDEM_CUDA_REQUIRE(op, n_rows >= 0 && dim >= 0, "negative size");
  TANDEM_CUDA_REQUIRE(op, n_rows <= INT32_MAX, "too many rows");
  if (n_rows == 0 || dim == 0) return Status::ok();
  TANDEM_CUDA_REQUIRE(op, y && row_token && row_weight && out, "null pointer");
  scatter_add_kernel<<<static_cast<unsigned>(n_rows), kBlock, 0, stream()>>>(dev(y), row_token, row_weight, out,
                                                                            dim);
  TANDEM_CUDA_CHECK_LAUNCH(op);
  return Status::ok();
}

// expf, not __expf: the fast one loses accuracy for large |g|.
template <typename T>
__global__ void silu_mul_kernel(const T* gate, const T* up, T* out, int64_t total) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = to_float(gate[i]);
    out[i] = from_float<T>(g / (1.0f + expf(-g)) * to_float(up[i]));
  }
}

template <typename T>
Status silu_mul_impl(const T* gate, const T* up, T* out, int64_t n, int64_t dim) {
  const char* op = "silu_mul";
  TANDEM_CUDA_REQUIRE(op, n >= 0 && dim >= 0, "negative size");
  const int64_t total = n * dim;
  if (total == 0) return Status::ok();
  TANDEM_CUDA_REQUIRE(op, gate && up && out, "null pointer");
  silu_mul_kernel<<<grid_for(total, kBlock), kBlock, 0, stream()>>>(dev(gate), dev(up), dev(out), total);
  TANDEM_CUDA_CHECK_LAUNCH(op);
  return Status::ok();
}

template <typename S, typename D>
__global__ void convert_kernel(const S* __restrict__ src, D* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = from_float<D>(to_float(src[i]));
  }
}

template <typename S, typename D>
Status convert_impl(const S* src, D* dst, int64_t n) {
  const char* op = "convert";
  TANDEM_CUDA_REQUIRE(op, n >= 0, "negative size");
  if (n == 0) return Status::ok();
  TANDEM_CUDA_REQUIRE(op, src && dst, "null pointer");
  convert_kernel<<<grid_for(n, kBlock), kBlock, 0, stream()>>>(dev(src), dev(dst), n);
  TANDEM_CUDA_CHECK_LAUNCH(op);
  return Status::ok();
}

}  // namespace

Status embedding(const float* table, const int32_t* ids, float* out, int64_t n, int64_t hidden) {
  return gather_impl("embedding", table, ids, out, n, hidden);
}
Status embedding(const Bf16* table, const int32_t* ids, Bf16* out, int64_t n, int64_t hidden) {
  return gather_impl("embedding", table, ids, out, n, hidden);
}
Status gather_rows(const float* x, const int32_t* rows, float* out, int64_t n_rows, int64_t dim) {
  return gather_impl("gather_rows", x, rows, out, n_rows, dim);
}
Status gather_rows(const Bf16* x, const int32_t* rows, Bf16* out, int64_t n_rows, int64_t dim) {
  return gather_impl("gather_rows", x, rows, out, n_rows, dim);
}

Status rope_neox(float* x, const int32_t* positions, const float* inv_freq, int64_t n, int64_t heads,
                 int64_t head_dim, int64_t rot_dim, float attention_scaling) {
  return rope_impl(x, positions, inv_freq, n, heads, head_dim, rot_dim, attention_scaling);
}
Status rope_neox(Bf16* x, const int32_t* positions, const float* inv_freq, int64_t n, int64_t heads,
                 int64_t head_dim, int64_t rot_dim, float attention_scaling) {
  return rope_impl(x, positions, inv_freq, n, heads, head_dim, rot_dim, attention_scaling);
}

Status kv_cache_write(const float* k, const float* v, const int64_t* slots, int64_t n, const PagedKv& cache) {
  return kv_write_impl(k, v, slots, n, cache);
}
Status kv_cache_write(const Bf16* k, const Bf16* v, const int64_t* slots, int64_t n, const PagedKvBf16& cache) {
  return kv_write_impl(k, v, slots, n, cache);
}

Status scatter_add_weighted(const float* y, const int32_t* row_token, const float* row_weight, float* out,
                            int64_t n_rows, int64_t dim) {
  return scatter_impl(y, row_token, row_weight, out, n_rows, dim);
}
Status scatter_add_weighted(const Bf16* y, const int32_t* row_token, const float* row_weight, float* out,
                            int64_t n_rows, int64_t dim) {
  return scatter_impl(y, row_token, row_weight, out, n_rows, dim);
}

Status silu_mul(const float* gate, const float* up, float* out, int64_t n, int64_t dim) {
  return silu_mul_impl(gate, up, out, n, dim);
}
Status silu_mul(const Bf16* gate, const Bf16* up, Bf16* out, int64_t n, int64_t dim) {
  return silu_mul_impl(gate, up, out, n, dim);
}

Status convert(const float* src, Bf16* dst, int64_t n) { return convert_impl(src, dst, n); }
Status convert(const Bf16* src, float* dst, int64_t n) { return convert_impl(src, dst, n); }

}  // namespace tandem::kernels::cuda
