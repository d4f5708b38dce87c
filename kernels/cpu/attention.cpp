// Attention: KV-cache writes, causal prefill over contiguous K/V, and paged
// attention over block tables (decode and chunked prefill).
//
// Both attention ops share one kernel. A work item is (query token, KV head,
// range of key positions): the hq/hkv query heads that read the same KV head are
// processed together so each K and V row is loaded once per group rather than
// once per query head. Softmax is online over tiles of key positions (running
// max and sum per query row, rescaling the accumulator when the max grows).
// When there are too few items to occupy the cores (small-batch decode over long
// contexts) a context is split into ranges whose partial results are merged
// afterwards. The split depends on the shapes only, not the thread count, so a
// given input always gives bit-identical output.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "tandem/kernels/cpu.h"

namespace tandem::kernels::cpu {

void kv_cache_write(const float* k, const float* v, const int64_t* slots, int64_t n, const PagedKv& c) {
  const int64_t row = c.kv_heads * c.head_dim;
  if (n <= 0 || row <= 0) return;
  const size_t bytes = static_cast<size_t>(row) * sizeof(float);
  for (int64_t t = 0; t < n; ++t) {
    std::memcpy(c.k + slots[t] * row, k + t * row, bytes);
    std::memcpy(c.v + slots[t] * row, v + t * row, bytes);
  }
}

namespace {

constexpr int64_t kTile = 32;           // key positions scored before one softmax rescale
constexpr int64_t kMinSplitLen = 256;   // shortest key range worth a separate item
constexpr int64_t kTargetItems = 32;    // enough items to keep a large machine busy

// Dot product with eight independent partial sums: strict IEEE ordering would
// otherwise keep the compiler from vectorising the reduction.
inline float dot(const float* a, const float* b, int64_t d) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= d; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}

struct Item {
  int64_t token, kv_head, p0, p1;
  int64_t partial;  // this range's partial-result slot, or -1 when it covers the whole context
  int64_t parts;    // on a context's first range: how many ranges follow in a row, itself included
};

// Online-softmax attention of g query rows q[g, d] over key positions [p0, p1).
// On return acc[g, d] holds Σ_j exp(s_j - m) v_j (unnormalised), m[g] the running
// max and l[g] the sum Σ_j exp(s_j - m). `rows(j0, j1, kp, vp)` fills K and V row
// pointers for positions [j0, j1).
template <typename Rows>
void attend_range(const float* q, int64_t g, int64_t d, float scale, int64_t p0, int64_t p1, const Rows& rows,
                  float* acc, float* m, float* l, float* s) {
  std::fill(acc, acc + g * d, 0.0f);
  std::fill(m, m + g, -INFINITY);
  std::fill(l, l + g, 0.0f);
  const float* kp[kTile];
  const float* vp[kTile];
  for (int64_t j0 = p0; j0 < p1; j0 += kTile) {
    const int64_t tn = std::min(kTile, p1 - j0);
    rows(j0, j0 + tn, kp, vp);
    for (int64_t j = 0; j < tn; ++j)
      for (int64_t r = 0; r < g; ++r) s[r * kTile + j] = dot(q + r * d, kp[j], d) * scale;
    for (int64_t r = 0; r < g; ++r) {
      float* sr = s + r * kTile;
      float tile_max = sr[0];
      for (int64_t j = 1; j < tn; ++j) tile_max = std::max(tile_max, sr[j]);
      const float m_new = std::max(m[r], tile_max);
      if (m_new > m[r]) {
        // exp(-inf) = 0 clears the (zero) accumulator on the first tile.
        const float c = std::exp(m[r] - m_new);
        l[r] *= c;
        if (c != 1.0f)
          for (int64_t i = 0; i < d; ++i) acc[r * d + i] *= c;
        m[r] = m_new;
      }
      float sum = 0.0f;
      for (int64_t j = 0; j < tn; ++j) sum += (sr[j] = std::exp(sr[j] - m_new));
      l[r] += sum;
    }
    for (int64_t j = 0; j < tn; ++j) {
      const float* v = vp[j];
      for (int64_t r = 0; r < g; ++r) {
        const float p = s[r * kTile + j];
        float* a = acc + r * d;
        for (int64_t i = 0; i < d; ++i) a[i] += p * v[i];
      }
    }
  }
}

// Splits each (token, KV head) context into ranges when there are too few of
// them to share among the cores. len(t) gives token t's context length.
template <typename Len>
int64_t plan_items(int64_t n_tokens, int64_t hkv, const Len& len, std::vector<Item>& items) {
  items.clear();
  const int64_t base = n_tokens * hkv;
  const int64_t want = base >= kTargetItems ? 1 : (kTargetItems + base - 1) / base;
  int64_t partials = 0;
  for (int64_t t = 0; t < n_tokens; ++t) {
    const int64_t L = len(t);
    const int64_t parts = std::max<int64_t>(1, std::min(want, L / kMinSplitLen));
    for (int64_t h = 0; h < hkv; ++h) {
      if (parts == 1) {
        items.push_back({t, h, 0, L, -1, 1});
        continue;
      }
      for (int64_t c = 0; c < parts; ++c)
        items.push_back({t, h, L * c / parts, L * (c + 1) / parts, partials++, c == 0 ? parts : 0});
    }
  }
  return partials;
}

// Runs every item and merges split contexts into out [n_tokens, hq, d].
template <typename Len, typename RowsFor>
void run_attention(const float* q, float* out, int64_t n_tokens, int64_t hq, int64_t hkv, int64_t d, float scale,
                   const Len& len, const RowsFor& rows_for) {
  if (n_tokens <= 0 || hq <= 0 || hkv <= 0 || d <= 0) return;
  const int64_t g = hq / hkv;
  // Plans and partial results live in the calling thread's buffers, reused
  // across calls so steady-state decode does not allocate.
  thread_local std::vector<Item> items;
  thread_local std::vector<float> partial;
  const int64_t n_partials = plan_items(n_tokens, hkv, len, items);
  const int64_t slot = g * (d + 2);  // acc[g, d], m[g], l[g]
  if (partial.size() < static_cast<size_t>(n_partials * slot)) partial.resize(static_cast<size_t>(n_partials * slot));
  float* const partial_base = partial.data();
  const Item* const item = items.data();
  const int64_t n_items = static_cast<int64_t>(items.size());
  int64_t work = 0;
  for (int64_t t = 0; t < n_tokens; ++t) work += len(t);
  const bool parallel = n_items > 1 && work * hq * d > (int64_t{1} << 16);

#pragma omp parallel if (parallel)
  {
    thread_local std::vector<float> buf;
    buf.resize(static_cast<size_t>(g * (kTile + 2)));
    float* s = buf.data();
    // Last items first: in causal prefill they are the longest, and starting
    // them early keeps one long item from finishing alone at the end.
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = n_items - 1; i >= 0; --i) {
      const Item& it = item[i];
      const float* qg = q + (it.token * hq + it.kv_head * g) * d;
      float* acc = it.partial < 0 ? out + (it.token * hq + it.kv_head * g) * d : partial_base + it.partial * slot;
      float* m = it.partial < 0 ? s + g * kTile : acc + g * d;
      float* l = m + g;
      attend_range(qg, g, d, scale, it.p0, it.p1, rows_for(it.token, it.kv_head), acc, m, l, s);
      if (it.partial >= 0) continue;
      for (int64_t r = 0; r < g; ++r) {
        // An empty context (l = 0) leaves zeros rather than NaNs.
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        for (int64_t x = 0; x < d; ++x) acc[r * d + x] *= inv;
      }
    }
    // Merge the ranges of each split context: rescale every range to the
    // common max, then normalise by the combined sum.
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n_items; ++i) {
      const Item& it = item[i];
      if (it.partial < 0 || it.parts == 0) continue;
      const int64_t parts = it.parts;
      float* o = out + (it.token * hq + it.kv_head * g) * d;
      for (int64_t r = 0; r < g; ++r) {
        float mx = -INFINITY;
        for (int64_t c = 0; c < parts; ++c) mx = std::max(mx, partial_base[(it.partial + c) * slot + g * d + r]);
        float total = 0.0f;
        std::fill(o + r * d, o + (r + 1) * d, 0.0f);
        for (int64_t c = 0; c < parts; ++c) {
          const float* p = partial_base + (it.partial + c) * slot;
          const float w = p[g * d + r] == -INFINITY ? 0.0f : std::exp(p[g * d + r] - mx);
          total += w * p[g * d + g + r];
          for (int64_t x = 0; x < d; ++x) o[r * d + x] += w * p[r * d + x];
        }
        const float inv = total > 0.0f ? 1.0f / total : 0.0f;
        for (int64_t x = 0; x < d; ++x) o[r * d + x] *= inv;
      }
    }
  }
}

}  // namespace

void attention_prefill(const float* q, const float* k, const float* v, float* out, int64_t n, int64_t hq,
                       int64_t hkv, int64_t d, float scale) {
  const int64_t stride = hkv * d;  // between consecutive positions of one KV head
  run_attention(
      q, out, n, hq, hkv, d, scale, [](int64_t t) { return t + 1; },
      [=](int64_t, int64_t kh) {
        return [=](int64_t j0, int64_t j1, const float** kp, const float** vp) {
          for (int64_t j = j0; j < j1; ++j) {
            kp[j - j0] = k + j * stride + kh * d;
            vp[j - j0] = v + j * stride + kh * d;
          }
        };
      });
}

void attention_paged(const float* q, float* out, int64_t n_tokens, int64_t hq, const PagedKv& c,
                     const int32_t* block_tables, int64_t max_blocks_per_seq, const int32_t* seq_of_token,
                     const int32_t* ctx_len, float scale) {
  const int64_t d = c.head_dim, hkv = c.kv_heads, bs = c.block_size;
  const float* kc = c.k;
  const float* vc = c.v;
  run_attention(
      q, out, n_tokens, hq, hkv, d, scale, [=](int64_t t) { return static_cast<int64_t>(ctx_len[t]); },
      [=](int64_t t, int64_t kh) {
        const int32_t* table = block_tables + static_cast<int64_t>(seq_of_token[t]) * max_blocks_per_seq;
        return [=](int64_t j0, int64_t j1, const float** kp, const float** vp) {
          // Walk blocks instead of dividing per position.
          int64_t blk = j0 / bs, off = j0 % bs;
          for (int64_t j = j0; j < j1; ++j) {
            const int64_t row = ((static_cast<int64_t>(table[blk]) * bs + off) * hkv + kh) * d;
            kp[j - j0] = kc + row;
            vp[j - j0] = vc + row;
            if (++off == bs) off = 0, ++blk;
          }
        };
      });
}

}  // namespace tandem::kernels::cpu
