#include <gtest/gtest.h>

#include "reference.h"
#include "tandem/kernels/cpu.h"

namespace tandem {
namespace {

namespace k = kernels::cpu;

struct AttnCase {
  int n, hq, hkv, d;
};

TEST(Kernels, AttentionPrefillMatchesFloat64) {
  std::mt19937 g(11);
  for (auto c : {AttnCase{1, 1, 1, 4}, AttnCase{7, 4, 4, 16}, AttnCase{13, 8, 2, 32}, AttnCase{33, 4, 1, 64}}) {
    auto q = ref::random_vec(g, c.n * c.hq * c.d), kk = ref::random_vec(g, c.n * c.hkv * c.d),
         v = ref::random_vec(g, c.n * c.hkv * c.d);
    std::vector<float> out(q.size());
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    k::attention_prefill(q.data(), kk.data(), v.data(), out.data(), c.n, c.hq, c.hkv, c.d, scale);
    ref::VecD r(q.size());
    const int grp = c.hq / c.hkv;
    for (int t = 0; t < c.n; ++t)
      for (int h = 0; h < c.hq; ++h)
        ref::attend(&q[(t * c.hq + h) * c.d], c.d, t + 1, scale,
                    [&](int64_t j) { return &kk[(j * c.hkv + h / grp) * c.d]; },
                    [&](int64_t j) { return &v[(j * c.hkv + h / grp) * c.d]; }, &r[(t * c.hq + h) * c.d]);
    EXPECT_LT(ref::rel_err(out, r), 1e-5) << c.n << " " << c.hq << "/" << c.hkv;
  }
}

// The cache holds several sequences in scrambled blocks; paged attention must
// equal contiguous attention over each sequence, for decode (one query at the
// end) and for chunked prefill (queries at ragged positions).
TEST(Kernels, AttentionPagedMatchesContiguousOverScrambledBlocks) {
  std::mt19937 g(12);
  for (int block_size : {1, 4, 16}) {
    const int hq = 8, hkv = 2, d = 32, grp = hq / hkv;
    const std::vector<int> lens{1, 5, 37, 64};
    int blocks_total = 0, max_blocks = 0;
    for (int L : lens) {
      const int b = (L + block_size - 1) / block_size;
      blocks_total += b;
      max_blocks = std::max(max_blocks, b);
    }
    const int num_blocks = blocks_total + 3;
    std::vector<int32_t> perm(num_blocks);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), g);
    std::vector<float> kc(num_blocks * block_size * hkv * d, NAN), vc(kc.size(), NAN);
    k::PagedKv cache{kc.data(), vc.data(), num_blocks, block_size, hkv, d};
    std::vector<int32_t> tables(lens.size() * max_blocks, -1);
    std::vector<std::vector<float>> seq_k, seq_v;
    int next = 0;
    for (size_t s = 0; s < lens.size(); ++s) {
      const int L = lens[s];
      seq_k.push_back(ref::random_vec(g, L * hkv * d));
      seq_v.push_back(ref::random_vec(g, L * hkv * d));
      for (int b = 0; b < (L + block_size - 1) / block_size; ++b) tables[s * max_blocks + b] = perm[next++];
      std::vector<int64_t> slots(L);
      for (int p = 0; p < L; ++p)
        slots[p] = static_cast<int64_t>(tables[s * max_blocks + p / block_size]) * block_size + p % block_size;
      k::kv_cache_write(seq_k[s].data(), seq_v[s].data(), slots.data(), L, cache);
    }
    // Queries: every position of sequence 2 (prefill) plus the last of each (decode).
    std::vector<int32_t> seq_of, ctx;
    for (int p = 0; p < lens[2]; ++p) seq_of.push_back(2), ctx.push_back(p + 1);
    for (size_t s = 0; s < lens.size(); ++s) seq_of.push_back(static_cast<int32_t>(s)), ctx.push_back(lens[s]);
    const int nq = static_cast<int>(seq_of.size());
    auto q = ref::random_vec(g, nq * hq * d);
    std::vector<float> out(q.size());
    const float scale = 0.125f;
    k::attention_paged(q.data(), out.data(), nq, hq, cache, tables.data(), max_blocks, seq_of.data(), ctx.data(),
                       scale);
    ref::VecD r(q.size());
    for (int t = 0; t < nq; ++t) {
      const auto& K = seq_k[seq_of[t]];
      const auto& V = seq_v[seq_of[t]];
      for (int h = 0; h < hq; ++h)
        ref::attend(&q[(t * hq + h) * d], d, ctx[t], scale, [&](int64_t j) { return &K[(j * hkv + h / grp) * d]; },
                    [&](int64_t j) { return &V[(j * hkv + h / grp) * d]; }, &r[(t * hq + h) * d]);
    }
    EXPECT_LT(ref::rel_err(out, r), 1e-5) << "block_size " << block_size;
  }
}

}  // namespace
}  // namespace tandem
