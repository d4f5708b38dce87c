// Attention: KV-cache writes, causal prefill over contiguous K/V, and paged
// attention over block tables (decode and chunked prefill).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "tandem/kernels/cpu.h"

namespace tandem::kernels::cpu {

void kv_cache_write(const float* k, const float* v, const int64_t* slots, int64_t n, const PagedKv& c) {
  const int64_t row = c.kv_heads * c.head_dim;
  for (int64_t t = 0; t < n; ++t) {
    std::memcpy(c.k + slots[t] * row, k + t * row, static_cast<size_t>(row) * sizeof(float));
    std::memcpy(c.v + slots[t] * row, v + t * row, static_cast<size_t>(row) * sizeof(float));
  }
}

namespace {
// Dot product with eight independent partial sums: strict IEEE ordering would
// otherwise stop the compiler from vectorising the reduction.
inline float dot(const float* a, const float* b, int64_t d) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= d; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}

// softmax(scores[0..len)) · V for one (query, head); `key(j)`/`value(j)` locate position j.
template <typename KeyAt, typename ValueAt>
void attend_one(const float* q, float* out, int64_t len, int64_t d, float scale, std::vector<float>& s,
                KeyAt key, ValueAt value) {
  s.resize(static_cast<size_t>(len));
  float m = -INFINITY;
  for (int64_t j = 0; j < len; ++j) {
    s[j] = dot(q, key(j), d) * scale;
    m = std::max(m, s[j]);
  }
  float z = 0;
  for (int64_t j = 0; j < len; ++j) z += (s[j] = std::exp(s[j] - m));
  const float inv = len > 0 ? 1.0f / z : 0.0f;
  std::fill(out, out + d, 0.0f);
  for (int64_t j = 0; j < len; ++j) {
    const float p = s[j] * inv;
    const float* vj = value(j);
    for (int64_t i = 0; i < d; ++i) out[i] += p * vj[i];
  }
}
}  // namespace

void attention_prefill(const float* q, const float* k, const float* v, float* out, int64_t n, int64_t hq,
                       int64_t hkv, int64_t d, float scale) {
  const int64_t group = hq / hkv;
#pragma omp parallel
  {
    std::vector<float> s;
#pragma omp for schedule(dynamic, 4)
    for (int64_t th = 0; th < n * hq; ++th) {
      const int64_t t = th / hq, h = th % hq, kh = h / group;
      attend_one(q + th * d, out + th * d, t + 1, d, scale, s,
                 [&](int64_t j) { return k + (j * hkv + kh) * d; },
                 [&](int64_t j) { return v + (j * hkv + kh) * d; });
    }
  }
}

void attention_paged(const float* q, float* out, int64_t n_tokens, int64_t hq, const PagedKv& c,
                     const int32_t* block_tables, int64_t max_blocks_per_seq, const int32_t* seq_of_token,
                     const int32_t* ctx_len, float scale) {
  const int64_t d = c.head_dim, hkv = c.kv_heads, group = hq / hkv, bs = c.block_size;
#pragma omp parallel
  {
    std::vector<float> s;
#pragma omp for schedule(dynamic, 1)
    for (int64_t th = 0; th < n_tokens * hq; ++th) {
      const int64_t t = th / hq, h = th % hq, kh = h / group;
      const int32_t* table = block_tables + static_cast<int64_t>(seq_of_token[t]) * max_blocks_per_seq;
      auto slot = [&](int64_t j) { return (static_cast<int64_t>(table[j / bs]) * bs + j % bs) * hkv + kh; };
      attend_one(q + th * d, out + th * d, ctx_len[t], d, scale, s,
                 [&](int64_t j) { return c.k + slot(j) * d; }, [&](int64_t j) { return c.v + slot(j) * d; });
    }
  }
}

}  // namespace tandem::kernels::cpu
