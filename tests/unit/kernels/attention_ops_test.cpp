// Attention kernels against a float64 two-pass softmax reference: contiguous
// causal prefill, paged attention over scrambled block tables (decode, chunked
// prefill, long contexts that the kernel splits), and the KV-cache write.
#include <gtest/gtest.h>

#include "reference.h"
#include "tandem/kernels/cpu.h"

namespace tandem {
namespace {

namespace k = kernels::cpu;

struct AttnCase {
  int n, hq, hkv, d;
  float q_scale;  // large queries push scores far from 0: softmax needs its max subtraction
};

TEST(Kernels, AttentionPrefillMatchesFloat64) {
  std::mt19937 g(11);
  // GQA ratios 1, 2 and 4 (and 8), head sizes that are not multiples of 8, and a
  // sequence long enough to run threaded.
  for (auto c : {AttnCase{1, 1, 1, 4, 1}, AttnCase{7, 4, 4, 16, 1}, AttnCase{13, 8, 2, 32, 1},
                 AttnCase{33, 4, 1, 64, 1}, AttnCase{19, 6, 3, 17, 1}, AttnCase{5, 2, 1, 3, 1},
                 AttnCase{11, 8, 1, 128, 1}, AttnCase{600, 4, 2, 64, 1}, AttnCase{40, 4, 2, 32, 30}}) {
    auto q = ref::random_vec(g, c.n * c.hq * c.d, c.q_scale), kk = ref::random_vec(g, c.n * c.hkv * c.d),
         v = ref::random_vec(g, c.n * c.hkv * c.d);
    std::vector<float> out(q.size(), NAN);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    k::attention_prefill(q.data(), kk.data(), v.data(), out.data(), c.n, c.hq, c.hkv, c.d, scale);
    ref::VecD r(q.size());
    const int grp = c.hq / c.hkv;
    for (int t = 0; t < c.n; ++t)
      for (int h = 0; h < c.hq; ++h)
        ref::attend(&q[(t * c.hq + h) * c.d], c.d, t + 1, scale,
                    [&](int64_t j) { return &kk[(j * c.hkv + h / grp) * c.d]; },
                    [&](int64_t j) { return &v[(j * c.hkv + h / grp) * c.d]; }, &r[(t * c.hq + h) * c.d]);
    EXPECT_LT(ref::rel_err(out, r), 1e-5) << c.n << " tokens, " << c.hq << "/" << c.hkv << " heads, d " << c.d;
  }
}

// Several sequences held in a paged cache whose blocks are handed out in a
// shuffled order. Unused cache rows hold NaN, so reading past a context or
// outside the table poisons the output.
struct ScrambledCache {
  std::vector<float> kc, vc;
  k::PagedKv cache;
  std::vector<int32_t> tables;
  int max_blocks = 0;
  std::vector<std::vector<float>> seq_k, seq_v;  // [len, hkv, d] per sequence

  ScrambledCache(std::mt19937& g, const std::vector<int>& lens, int block_size, int hkv, int d) {
    int blocks_total = 0;
    for (int L : lens) {
      const int b = (L + block_size - 1) / block_size;
      blocks_total += b;
      max_blocks = std::max(max_blocks, b);
    }
    max_blocks = std::max(max_blocks, 1);
    const int num_blocks = blocks_total + 3;
    std::vector<int32_t> perm(num_blocks);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), g);
    kc.assign(static_cast<size_t>(num_blocks) * block_size * hkv * d, NAN);
    vc.assign(kc.size(), NAN);
    cache = {kc.data(), vc.data(), num_blocks, block_size, hkv, d};
    tables.assign(lens.size() * max_blocks, -1);
    int next = 0;
    for (size_t s = 0; s < lens.size(); ++s) {
      const int L = lens[s];
      seq_k.push_back(ref::random_vec(g, static_cast<size_t>(L) * hkv * d));
      seq_v.push_back(ref::random_vec(g, static_cast<size_t>(L) * hkv * d));
      for (int b = 0; b < (L + block_size - 1) / block_size; ++b) tables[s * max_blocks + b] = perm[next++];
      std::vector<int64_t> slots(L);
      for (int p = 0; p < L; ++p)
        slots[p] = static_cast<int64_t>(tables[s * max_blocks + p / block_size]) * block_size + p % block_size;
      k::kv_cache_write(seq_k[s].data(), seq_v[s].data(), slots.data(), L, cache);
    }
  }
};

// Paged attention equals contiguous attention over each sequence for decode
// (one query at the end), chunked prefill (every position of one sequence) and
// a query that sees only part of what its sequence holds.
TEST(Kernels, AttentionPagedMatchesFloat64OverScrambledBlocks) {
  std::mt19937 g(12);
  struct Heads {
    int hq, hkv, d;
  };
  for (int block_size : {1, 5, 16}) {
    for (auto [hq, hkv, d] : {Heads{4, 4, 32}, Heads{8, 4, 24}, Heads{8, 2, 32}, Heads{4, 1, 128}}) {
      const int grp = hq / hkv;
      const std::vector<int> lens{1, 5, 37, 64, 17};
      ScrambledCache sc(g, lens, block_size, hkv, d);
      std::vector<int32_t> seq_of, ctx;
      for (int p = 0; p < lens[2]; ++p) seq_of.push_back(2), ctx.push_back(p + 1);
      for (size_t s = 0; s < lens.size(); ++s) seq_of.push_back(static_cast<int32_t>(s)), ctx.push_back(lens[s]);
      seq_of.push_back(3), ctx.push_back(29);  // ragged: a prefix of what sequence 3 holds
      const int nq = static_cast<int>(seq_of.size());
      auto q = ref::random_vec(g, nq * hq * d);
      std::vector<float> out(q.size(), NAN);
      const float scale = 1.0f / std::sqrt(static_cast<float>(d));
      k::attention_paged(q.data(), out.data(), nq, hq, sc.cache, sc.tables.data(), sc.max_blocks, seq_of.data(),
                         ctx.data(), scale);
      ref::VecD r(q.size());
      for (int t = 0; t < nq; ++t) {
        const auto& K = sc.seq_k[seq_of[t]];
        const auto& V = sc.seq_v[seq_of[t]];
        for (int h = 0; h < hq; ++h)
          ref::attend(&q[(t * hq + h) * d], d, ctx[t], scale, [&](int64_t j) { return &K[(j * hkv + h / grp) * d]; },
                      [&](int64_t j) { return &V[(j * hkv + h / grp) * d]; }, &r[(t * hq + h) * d]);
      }
      EXPECT_LT(ref::rel_err(out, r), 1e-5) << "block_size " << block_size << ", heads " << hq << "/" << hkv;
    }
  }
}

// Few queries over long contexts: the kernel splits each context into ranges
// and merges them; the result must not depend on that.
TEST(Kernels, AttentionPagedLongContextDecodeMatchesFloat64) {
  std::mt19937 g(13);
  for (auto [hq, hkv, block_size] : {std::tuple{8, 2, 16}, {8, 1, 1}, {4, 4, 7}}) {
    const int d = 128, grp = hq / hkv;
    const std::vector<int> lens{2049, 700, 3, 512};
    ScrambledCache sc(g, lens, block_size, hkv, d);
    std::vector<int32_t> seq_of{0, 1, 2, 3}, ctx{2049, 700, 3, 300};
    const int nq = 4;
    // Queries scaled up so the range maxima differ widely and the merge's
    // rescaling matters.
    auto q = ref::random_vec(g, nq * hq * d, 4.0f);
    std::vector<float> out(q.size(), NAN);
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    k::attention_paged(q.data(), out.data(), nq, hq, sc.cache, sc.tables.data(), sc.max_blocks, seq_of.data(),
                       ctx.data(), scale);
    ref::VecD r(q.size());
    for (int t = 0; t < nq; ++t)
      for (int h = 0; h < hq; ++h)
        ref::attend(&q[(t * hq + h) * d], d, ctx[t], scale,
                    [&](int64_t j) { return &sc.seq_k[seq_of[t]][(j * hkv + h / grp) * d]; },
                    [&](int64_t j) { return &sc.seq_v[seq_of[t]][(j * hkv + h / grp) * d]; }, &r[(t * hq + h) * d]);
    EXPECT_LT(ref::rel_err(out, r), 1e-5) << hq << "/" << hkv << " heads, block_size " << block_size;
    // Same inputs, same bits.
    std::vector<float> again(q.size());
    k::attention_paged(q.data(), again.data(), nq, hq, sc.cache, sc.tables.data(), sc.max_blocks, seq_of.data(),
                       ctx.data(), scale);
    EXPECT_EQ(out, again);
  }
}

// The cache holds one sequence in scrambled blocks; paged attention with one
// query per position must equal contiguous causal prefill over it.
TEST(Kernels, AttentionPagedEqualsPrefillOnTheSameSequence) {
  std::mt19937 g(14);
  for (auto [n, hq, hkv, block_size] : {std::tuple{300, 8, 2, 16}, {23, 4, 2, 1}, {70, 4, 1, 3}}) {
    const int d = 64;
    ScrambledCache sc(g, {n}, block_size, hkv, d);
    auto q = ref::random_vec(g, n * hq * d);
    std::vector<int32_t> seq_of(n, 0), ctx(n);
    std::iota(ctx.begin(), ctx.end(), 1);
    std::vector<float> paged(q.size(), NAN), prefill(q.size(), NAN);
    k::attention_paged(q.data(), paged.data(), n, hq, sc.cache, sc.tables.data(), sc.max_blocks, seq_of.data(),
                       ctx.data(), 0.125f);
    k::attention_prefill(q.data(), sc.seq_k[0].data(), sc.seq_v[0].data(), prefill.data(), n, hq, hkv, d, 0.125f);
    EXPECT_LT(ref::rel_err(paged, ref::to_double(prefill)), 1e-6) << n << " tokens, block_size " << block_size;
  }
}

TEST(Kernels, AttentionPagedEmptyContextGivesZeros) {
  std::mt19937 g(15);
  ScrambledCache sc(g, {0, 4}, 4, 2, 8);
  auto q = ref::random_vec(g, 2 * 4 * 8);
  std::vector<int32_t> seq_of{0, 1}, ctx{0, 4};
  std::vector<float> out(q.size(), NAN);
  k::attention_paged(q.data(), out.data(), 2, 4, sc.cache, sc.tables.data(), sc.max_blocks, seq_of.data(), ctx.data(),
                     0.3f);
  for (int i = 0; i < 4 * 8; ++i) EXPECT_EQ(out[i], 0.0f) << i;
  for (int i = 4 * 8; i < 2 * 4 * 8; ++i) EXPECT_FALSE(std::isnan(out[i])) << i;
}

TEST(Kernels, KvCacheWriteFillsExactlyTheGivenSlots) {
  std::mt19937 g(16);
  const int blocks = 5, bs = 3, hkv = 2, d = 5, n = 7, row = hkv * d;
  std::vector<float> kc(blocks * bs * row, -1.0f), vc(kc.size(), -2.0f);
  k::PagedKv cache{kc.data(), vc.data(), blocks, bs, hkv, d};
  std::vector<int64_t> slots{14, 0, 7, 8, 2, 12, 5};
  auto kk = ref::random_vec(g, n * row), v = ref::random_vec(g, n * row);
  k::kv_cache_write(kk.data(), v.data(), slots.data(), n, cache);
  for (int s = 0; s < blocks * bs; ++s) {
    const auto it = std::find(slots.begin(), slots.end(), s);
    for (int i = 0; i < row; ++i) {
      if (it == slots.end()) {
        EXPECT_EQ(kc[s * row + i], -1.0f);
        EXPECT_EQ(vc[s * row + i], -2.0f);
      } else {
        const int t = static_cast<int>(it - slots.begin());
        EXPECT_EQ(kc[s * row + i], kk[t * row + i]);
        EXPECT_EQ(vc[s * row + i], v[t * row + i]);
      }
    }
  }
}

}  // namespace
}  // namespace tandem
