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

// Eight floats in one AVX register (GCC/Clang vector extension): the inner
// products below keep their running sums in registers explicitly, which the
// auto-vectoriser does not reliably do for these loop nests.
using v8 = float __attribute__((vector_size(32)));
inline v8 load8(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof v); }
using v8i = int32_t __attribute__((vector_size(32)));

// exp(x) for x <= 0, eight lanes at once, within 2 ulp of expf. Scalar expf per
// score costs more than the score's 128-wide dot product, which made decode
// attention exp-bound. x = n·ln2 + r with |r| <= ln2/2 (ln2 split in two parts so
// n·ln2 is exact), exp(r) by a degree-7 polynomial (Cephes expf's coefficients),
// 2^n built in the exponent bits. Inputs below -87 give exp(-87) ≈ 1.6e-38 rather
// than 0, which is below anything a sum that contains exp(0) = 1 can notice.
inline v8 exp_nonpositive(v8 x) {
  const v8 lo = v8{} - 87.0f;
  x = x < lo ? lo : x;
  // Round to nearest by the 1.5·2^23 trick: exact for |x·log2e| < 2^22.
  const v8 magic = v8{} + 12582912.0f;
  const v8 n = (x * 1.44269504088896341f + magic) - magic;
  const v8 r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  v8 p = v8{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
  v8 scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
inline float max_lanes(v8 a) {
  float m = a[0];
  for (int l = 1; l < 8; ++l) m = std::max(m, a[l]);
  return m;
}

// out[r * stride + c] = scale · q[r, :] · k[c] for R query rows and C keys. Each
// (row, key) pair keeps eight partial sums in one register; R·C = 8 independent
// chains hide the FMA latency, and every load of q or k feeds C or R of them.
template <int R, int C>
inline void dot_block(const float* q, int64_t d, const float* const* k, float scale, float* out, int64_t stride) {
  v8 acc[R][C] = {};
  int64_t i = 0;
  for (; i + 8 <= d; i += 8) {
    v8 kv[C];
    for (int c = 0; c < C; ++c) kv[c] = load8(k[c] + i);
    for (int r = 0; r < R; ++r) {
      const v8 qv = load8(q + r * d + i);
      for (int c = 0; c < C; ++c) acc[r][c] += qv * kv[c];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      const v8 a = acc[r][c];
      float s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
      for (int64_t t = i; t < d; ++t) s += q[r * d + t] * k[c][t];
      out[r * stride + c] = s * scale;
    }
}

// Scores of query rows [r, r + R) against the tile's tn keys.
template <int R>
inline void score_rows(const float* q, int64_t d, const float* const* kp, int64_t tn, float scale, float* s,
                       int64_t stride) {
  constexpr int C = 8 / R;
  int64_t j = 0;
  for (; j + C <= tn; j += C) dot_block<R, C>(q, d, kp + j, scale, s + j, stride);
  for (; j < tn; ++j) dot_block<R, 1>(q, d, kp + j, scale, s + j, stride);
}

// a[0, d) += Σ_j p[j] · v[j][0, d) over the tn rows of a tile, 64 features at a
// time: eight running sums stay in registers (enough chains to hide the FMA
// latency) while the V rows stream from L1.
inline void accumulate_rows(float* a, int64_t d, const float* p, const float* const* v, int64_t tn) {
  int64_t i = 0;
  for (; i + 64 <= d; i += 64) {
    v8 sum[8];
    for (int u = 0; u < 8; ++u) sum[u] = load8(a + i + 8 * u);
    for (int64_t j = 0; j < tn; ++j) {
      const float pj = p[j];
      const float* vj = v[j] + i;
      for (int u = 0; u < 8; ++u) sum[u] += pj * load8(vj + 8 * u);
    }
    for (int u = 0; u < 8; ++u) store8(a + i + 8 * u, sum[u]);
  }
  for (; i + 8 <= d; i += 8) {
    v8 sum = load8(a + i);
    for (int64_t j = 0; j < tn; ++j) sum += p[j] * load8(v[j] + i);
    store8(a + i, sum);
  }
  for (; i < d; ++i) {
    float sum = a[i];
    for (int64_t j = 0; j < tn; ++j) sum += p[j] * v[j][i];
    a[i] = sum;
  }
}

// Asks for a row of d floats to be brought towards the core (L2: the tile's rows
// together exceed L1).
inline void prefetch_row(const float* p, int64_t d) {
  for (int64_t i = 0; i < d; i += 16) __builtin_prefetch(p + i, 0, 2);
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
  // Row pointers for this tile and the next: paged rows are scattered, so the
  // hardware prefetcher cannot run ahead; we request the next tile's K rows and
  // this tile's V rows while the current scores are computed.
  const float* ptr[2][2][kTile];
  int cur = 0;
  if (p0 < p1) rows(p0, std::min(p0 + kTile, p1), ptr[0][0], ptr[0][1]);
  for (int64_t j0 = p0; j0 < p1; j0 += kTile) {
    const int64_t tn = std::min(kTile, p1 - j0);
    const float* const* kp = ptr[cur][0];
    const float* const* vp = ptr[cur][1];
    int64_t next_n = 0;
    if (j0 + kTile < p1) {
      next_n = std::min(kTile, p1 - j0 - kTile);
      rows(j0 + kTile, j0 + kTile + next_n, ptr[cur ^ 1][0], ptr[cur ^ 1][1]);
    }
    const float* const* next_kp = ptr[cur ^ 1][0];
    cur ^= 1;
    // Scores eight keys at a time, with the prefetches for those eight spread
    // between them: issued all at once they would overflow the miss queue.
    for (int64_t c0 = 0; c0 < tn; c0 += 8) {
      const int64_t cn = std::min<int64_t>(8, tn - c0);
      for (int64_t j = c0; j < c0 + cn; ++j) {
        prefetch_row(vp[j], d);
        if (j < next_n) prefetch_row(next_kp[j], d);
      }
      int64_t r = 0;
      for (; r + 4 <= g; r += 4) score_rows<4>(q + r * d, d, kp + c0, cn, scale, s + r * kTile + c0, kTile);
      for (; r + 2 <= g; r += 2) score_rows<2>(q + r * d, d, kp + c0, cn, scale, s + r * kTile + c0, kTile);
      for (; r < g; ++r) score_rows<1>(q + r * d, d, kp + c0, cn, scale, s + r * kTile + c0, kTile);
    }
    const int64_t tv = (tn + 7) / 8 * 8;  // the tile in whole vectors
    for (int64_t r = 0; r < g; ++r) {
      float* sr = s + r * kTile;
      for (int64_t j = tn; j < tv; ++j) sr[j] = -INFINITY;
      v8 vmax = load8(sr);
      for (int64_t j = 8; j < tv; j += 8) {
        const v8 b = load8(sr + j);
        vmax = vmax > b ? vmax : b;
      }
      const float m_new = std::max(m[r], max_lanes(vmax));
      if (m_new > m[r]) {
        // exp(-inf) = 0 clears the (zero) accumulator on the first tile.
        const float c = std::exp(m[r] - m_new);
        l[r] *= c;
        if (c != 1.0f)
          for (int64_t i = 0; i < d; ++i) acc[r * d + i] *= c;
        m[r] = m_new;
      }
      v8 vsum = {};
      for (int64_t j = 0; j < tv; j += 8) {
        v8 e = exp_nonpositive(load8(sr + j) - m_new);
        if (j + 8 > tn)
          for (int64_t x = tn - j; x < 8; ++x) e[x] = 0.0f;  // lanes past the tile
        store8(sr + j, e);
        vsum += e;
      }
      l[r] += ((vsum[0] + vsum[1]) + (vsum[2] + vsum[3])) + ((vsum[4] + vsum[5]) + (vsum[6] + vsum[7]));
    }
    for (int64_t r = 0; r < g; ++r) accumulate_rows(acc + r * d, d, s + r * kTile, vp, tn);
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
