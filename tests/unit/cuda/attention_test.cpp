// kv_cache_write, attention_prefill and attention_paged vs the CPU reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "cuda_test_util.h"

namespace tandem::kernels::cuda::testing {
namespace {

using AttentionCuda = CudaTest;

struct PrefillCase {
  int64_t n, hq, hkv, d;
};

TEST_F(AttentionCuda, PrefillMatchesCpu) {
  for (PrefillCase c : {PrefillCase{1, 4, 4, 64}, PrefillCase{7, 8, 2, 128}, PrefillCase{100, 12, 1, 80},
                        PrefillCase{333, 4, 2, 256}, PrefillCase{1100, 8, 2, 128}}) {
    SCOPED_TRACE(::testing::Message() << "n=" << c.n << " hq=" << c.hq << " hkv=" << c.hkv << " d=" << c.d);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    auto q = random_floats(c.n * c.hq * c.d, 21, -2.0f, 2.0f);
    auto k = random_floats(c.n * c.hkv * c.d, 22, -2.0f, 2.0f);
    auto v = random_floats(c.n * c.hkv * c.d, 23);
    std::vector<float> ref(q.size());
    cpu::attention_prefill(q.data(), k.data(), v.data(), ref.data(), c.n, c.hq, c.hkv, c.d, scale);
    DeviceBuffer<float> dq(q), dk(k), dv(v), dout(q.size());
    TANDEM_ASSERT_OK(attention_prefill(dq.get(), dk.get(), dv.get(), dout.get(), c.n, c.hq, c.hkv, c.d, scale));
    EXPECT_TRUE(all_close(dout.to_host(), ref, 1e-4f, 2e-5f));
  }
}

TEST_F(AttentionCuda, PrefillBf16) {
  const int64_t n = 200, hq = 8, hkv = 2, d = 128;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  auto q = round_bf16(random_floats(n * hq * d, 24, -2.0f, 2.0f));
  auto k = round_bf16(random_floats(n * hkv * d, 25, -2.0f, 2.0f));
  auto v = round_bf16(random_floats(n * hkv * d, 26));
  std::vector<float> ref(q.size());
  cpu::attention_prefill(q.data(), k.data(), v.data(), ref.data(), n, hq, hkv, d, scale);
  DeviceBuffer<Bf16> dq(to_bf16(q)), dk(to_bf16(k)), dv(to_bf16(v)), dout(q.size());
  TANDEM_ASSERT_OK(attention_prefill(dq.get(), dk.get(), dv.get(), dout.get(), n, hq, hkv, d, scale));
  EXPECT_TRUE(all_close(from_bf16(dout.to_host()), ref, 1.6e-2f, 4e-3f));
}

// A paged cache whose sequences own shuffled (non-contiguous) blocks.
struct PagedSetup {
  int64_t block_size, kv_heads, head_dim, num_blocks, max_blocks_per_seq;
  std::vector<int32_t> block_tables;  // [num_seqs, max_blocks_per_seq]
  std::vector<float> k, v;            // random everywhere, including unused slots

  PagedSetup(const std::vector<int64_t>& seq_lens, int64_t bs, int64_t hkv, int64_t d, uint32_t seed)
      : block_size(bs), kv_heads(hkv), head_dim(d) {
    max_blocks_per_seq = 1;
    int64_t used = 0;
    for (int64_t len : seq_lens) {
      const int64_t b = (len + bs - 1) / bs;
      max_blocks_per_seq = std::max(max_blocks_per_seq, b);
      used += b;
    }
    num_blocks = used + 3;  // spare blocks the kernel must never read
    std::vector<int32_t> pool(num_blocks);
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), std::mt19937(seed));
    block_tables.assign(seq_lens.size() * max_blocks_per_seq, -1);
    size_t next = 0;
    for (size_t s = 0; s < seq_lens.size(); ++s) {
      for (int64_t j = 0; j < (seq_lens[s] + bs - 1) / bs; ++j) {
        block_tables[s * max_blocks_per_seq + j] = pool[next++];
      }
    }
    k = random_floats(num_blocks * bs * hkv * d, seed + 1, -2.0f, 2.0f);
    v = random_floats(num_blocks * bs * hkv * d, seed + 2);
  }
  PagedKv host_view() {
    return PagedKv{k.data(), v.data(), num_blocks, block_size, kv_heads, head_dim};
  }
};

struct PagedQuery {
  std::vector<int32_t> seq_of_token, ctx_len;
};

void check_paged(PagedSetup& cache, const PagedQuery& pq, int64_t hq, uint32_t seed) {
  const int64_t n = static_cast<int64_t>(pq.seq_of_token.size()), d = cache.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  auto q = random_floats(n * hq * d, seed, -2.0f, 2.0f);
  std::vector<float> ref(q.size());
  cpu::attention_paged(q.data(), ref.data(), n, hq, cache.host_view(), cache.block_tables.data(),
                       cache.max_blocks_per_seq, pq.seq_of_token.data(), pq.ctx_len.data(), scale);

  DeviceBuffer<float> dq(q), dout(q.size()), dk(cache.k), dv(cache.v);
  DeviceBuffer<int32_t> dbt(cache.block_tables), dseq(pq.seq_of_token), dctx(pq.ctx_len);
  PagedKv dcache{dk.get(), dv.get(), cache.num_blocks, cache.block_size, cache.kv_heads, d};
  TANDEM_ASSERT_OK(attention_paged(dq.get(), dout.get(), n, hq, dcache, dbt.get(), cache.max_blocks_per_seq,
                                   dseq.get(), dctx.get(), scale));
  EXPECT_TRUE(all_close(dout.to_host(), ref, 1e-4f, 2e-5f));

  // Same problem in BF16.
  auto qb = round_bf16(q), kb = round_bf16(cache.k), vb = round_bf16(cache.v);
  PagedKv host_b{kb.data(), vb.data(), cache.num_blocks, cache.block_size, cache.kv_heads, d};
  std::vector<float> refb(q.size());
  cpu::attention_paged(qb.data(), refb.data(), n, hq, host_b, cache.block_tables.data(), cache.max_blocks_per_seq,
                       pq.seq_of_token.data(), pq.ctx_len.data(), scale);
  DeviceBuffer<Bf16> dqb(to_bf16(qb)), doutb(q.size()), dkb(to_bf16(kb)), dvb(to_bf16(vb));
  PagedKvBf16 dcache_b{dkb.get(), dvb.get(), cache.num_blocks, cache.block_size, cache.kv_heads, d};
  TANDEM_ASSERT_OK(attention_paged(dqb.get(), doutb.get(), n, hq, dcache_b, dbt.get(), cache.max_blocks_per_seq,
                                   dseq.get(), dctx.get(), scale));
  EXPECT_TRUE(all_close(from_bf16(doutb.to_host()), refb, 1.6e-2f, 4e-3f));
}

// Few tokens and one long context: the context is split across blocks and merged.
TEST_F(AttentionCuda, PagedDecodeRaggedBatchWithLongContext) {
  std::vector<int64_t> lens = {1, 17, 64, 300, 4100};
  PagedSetup cache(lens, 16, 2, 128, 31);
  PagedQuery pq;
  for (size_t s = 0; s < lens.size(); ++s) {
    pq.seq_of_token.push_back(static_cast<int32_t>(s));
    pq.ctx_len.push_back(static_cast<int32_t>(lens[s]));
  }
  check_paged(cache, pq, 8, 32);
}

// A prefill chunk read back through the cache: many tokens, ctx = pos + 1, no split.
TEST_F(AttentionCuda, PagedPrefillChunkSmallHeads) {
  PagedSetup cache({300}, 16, 16, 64, 41);
  PagedQuery pq;
  for (int32_t p = 0; p < 300; ++p) {
    pq.seq_of_token.push_back(0);
    pq.ctx_len.push_back(p + 1);
  }
  check_paged(cache, pq, 16, 42);
}

// Group of 12 query heads (more than one head chunk), head_dim 256, odd block size.
TEST_F(AttentionCuda, PagedWideGroupOddBlockSize) {
  std::vector<int64_t> lens = {5, 250, 1000};
  PagedSetup cache(lens, 7, 1, 256, 51);
  PagedQuery pq{{0, 1, 2, 2}, {5, 250, 999, 1000}};
  check_paged(cache, pq, 12, 52);
}

// head_dim 80: not a divisor of the block, one head per kv head (MHA).
TEST_F(AttentionCuda, PagedOddHeadDim) {
  std::vector<int64_t> lens = {33, 129};
  PagedSetup cache(lens, 32, 4, 80, 61);
  PagedQuery pq{{1, 0}, {129, 33}};
  check_paged(cache, pq, 4, 62);
}

TEST_F(AttentionCuda, PagedEmptyContextGivesZeros) {
  PagedSetup cache({16}, 16, 1, 64, 71);
  PagedQuery pq{{0}, {0}};
  auto q = random_floats(64, 72);
  DeviceBuffer<float> dq(q), dout(random_floats(64, 73)), dk(cache.k), dv(cache.v);
  DeviceBuffer<int32_t> dbt(cache.block_tables), dseq(pq.seq_of_token), dctx(pq.ctx_len);
  PagedKv dcache{dk.get(), dv.get(), cache.num_blocks, cache.block_size, cache.kv_heads, cache.head_dim};
  TANDEM_ASSERT_OK(attention_paged(dq.get(), dout.get(), 1, 1, dcache, dbt.get(), cache.max_blocks_per_seq,
                                   dseq.get(), dctx.get(), 0.125f));
  EXPECT_EQ(dout.to_host(), std::vector<float>(64, 0.0f));
}

TEST_F(AttentionCuda, KvCacheWriteMatchesCpu) {
  const int64_t num_blocks = 9, bs = 4, hkv = 2, d = 48, n = 11;
  std::vector<int64_t> slots(n);
  std::vector<int64_t> all(num_blocks * bs);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), std::mt19937(81));
  std::copy_n(all.begin(), n, slots.begin());
  auto k = random_floats(n * hkv * d, 82), v = random_floats(n * hkv * d, 83);
  auto kc = random_floats(num_blocks * bs * hkv * d, 84), vc = random_floats(num_blocks * bs * hkv * d, 85);
  std::vector<float> ref_k = kc, ref_v = vc;
  cpu::kv_cache_write(k.data(), v.data(), slots.data(), n,
                      PagedKv{ref_k.data(), ref_v.data(), num_blocks, bs, hkv, d});
  DeviceBuffer<float> dk(k), dv(v), dkc(kc), dvc(vc);
  DeviceBuffer<int64_t> dslots(slots);
  TANDEM_ASSERT_OK(kv_cache_write(dk.get(), dv.get(), dslots.get(), n, PagedKv{dkc.get(), dvc.get(), num_blocks, bs, hkv, d}));
  EXPECT_EQ(dkc.to_host(), ref_k);
  EXPECT_EQ(dvc.to_host(), ref_v);

  DeviceBuffer<Bf16> dkb(to_bf16(k)), dvb(to_bf16(v)), dkcb(to_bf16(kc)), dvcb(to_bf16(vc));
  TANDEM_ASSERT_OK(kv_cache_write(dkb.get(), dvb.get(), dslots.get(), n,
                                  PagedKvBf16{dkcb.get(), dvcb.get(), num_blocks, bs, hkv, d}));
  EXPECT_EQ(from_bf16(dkcb.to_host()), round_bf16(ref_k));
  EXPECT_EQ(from_bf16(dvcb.to_host()), round_bf16(ref_v));
}

}  // namespace
}  // namespace tandem::kernels::cuda::testing
