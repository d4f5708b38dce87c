// Router, permutation, expert FFN and the combine vs the CPU reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <numeric>
#include <random>

#include "cuda_test_util.h"

namespace tandem::kernels::cuda::testing {
namespace {

using MoeCuda = CudaTest;

void check_gate(const GateParams& p, int64_t n, uint32_t seed, const std::vector<float>& bias = {}) {
  const int64_t E = p.num_experts, k = p.top_k;
  auto logits = random_floats(n * E, seed, -4.0f, 4.0f);
  GateParams host_p = p;
  host_p.correction_bias = bias.empty() ? nullptr : bias.data();
  std::vector<int32_t> ref_idx(n * k);
  std::vector<float> ref_w(n * k);
  cpu::moe_gate_topk(logits.data(), ref_idx.data(), ref_w.data(), n, host_p);

  DeviceBuffer<float> dlogits(logits), dbias(bias), dw(n * k);
  DeviceBuffer<int32_t> didx(n * k);
  GateParams dev_p = p;
  dev_p.correction_bias = bias.empty() ? nullptr : dbias.get();
  TANDEM_ASSERT_OK(moe_gate_topk(dlogits.get(), didx.get(), dw.get(), n, dev_p));
  EXPECT_EQ(didx.to_host(), ref_idx);  // random logits: no near-ties to flip
  EXPECT_TRUE(all_close(dw.to_host(), ref_w, 1e-5f, 1e-7f));
}

TEST_F(MoeCuda, GateSoftmaxTopkRenormalised) {
  GateParams p;
  p.num_experts = 8;
  p.top_k = 2;
  for (int64_t n : {1, 5, 1000}) check_gate(p, n, 101 + static_cast<uint32_t>(n));
}

TEST_F(MoeCuda, GateSoftmaxNoRenormScaled) {
  GateParams p;
  p.num_experts = 160;
  p.top_k = 6;
  p.renormalize = false;
  p.routed_scaling = 16.0f;
  check_gate(p, 37, 102);
}

TEST_F(MoeCuda, GateSoftmaxGroupLimited) {
  GateParams p;
  p.num_experts = 64;
  p.top_k = 6;
  p.renormalize = false;
  p.n_group = 8;
  p.topk_group = 3;
  check_gate(p, 50, 103);
}

TEST_F(MoeCuda, GateSigmoidGroupedWithBias) {
  GateParams p;
  p.num_experts = 256;
  p.top_k = 8;
  p.scoring = GateScoring::kSigmoid;
  p.routed_scaling = 2.5f;
  p.n_group = 8;
  p.topk_group = 4;
  check_gate(p, 64, 104, random_floats(256, 105, -0.1f, 0.1f));
}

struct Routing {
  std::vector<int32_t> idx;
  std::vector<float> w;
};

// Each token picks k distinct experts among the first `used` ones, so the rest stay empty.
Routing random_routing(int64_t n, int64_t k, int64_t used, uint32_t seed) {
  std::mt19937 gen(seed);
  Routing r;
  std::vector<int32_t> experts(used);
  std::iota(experts.begin(), experts.end(), 0);
  for (int64_t t = 0; t < n; ++t) {
    std::shuffle(experts.begin(), experts.end(), gen);
    for (int64_t j = 0; j < k; ++j) r.idx.push_back(experts[j]);
  }
  r.w = random_floats(n * k, seed + 1, 0.0f, 1.0f);
  return r;
}

TEST_F(MoeCuda, PermuteIsTheStableCountingSort) {
  struct Case {
    int64_t n, k, E, used;
  };
  for (Case c : {Case{0, 2, 8, 8}, Case{1, 1, 4, 4}, Case{1, 8, 64, 64}, Case{37, 2, 16, 5},
                 Case{4096, 8, 128, 128}}) {
    SCOPED_TRACE(::testing::Message() << "n=" << c.n << " k=" << c.k << " E=" << c.E);
    Routing r = random_routing(c.n, c.k, c.used, 111);
    const int64_t rows = c.n * c.k;
    std::vector<int32_t> ref_off(c.E + 1), ref_tok(rows);
    std::vector<float> ref_w(rows);
    cpu::moe_permute(r.idx.data(), r.w.data(), c.n, c.k, c.E, ref_off.data(), ref_tok.data(), ref_w.data());
    DeviceBuffer<int32_t> didx(r.idx), doff(c.E + 1), dtok(rows);
    DeviceBuffer<float> dw(r.w), drw(rows);
    TANDEM_ASSERT_OK(moe_permute(didx.get(), dw.get(), c.n, c.k, c.E, doff.get(), dtok.get(), drw.get()));
    EXPECT_EQ(doff.to_host(), ref_off);
    EXPECT_EQ(dtok.to_host(), ref_tok);
    EXPECT_EQ(drw.to_host(), ref_w);
  }
}

TEST_F(MoeCuda, ScatterAddWeighted) {
  const int64_t n = 9, k = 3, dim = 257;
  Routing r = random_routing(n, k, 6, 121);
  std::vector<int32_t> row_token(n * k);
  for (int64_t i = 0; i < n * k; ++i) row_token[i] = static_cast<int32_t>(i / k);
  std::shuffle(row_token.begin(), row_token.end(), std::mt19937(122));
  auto y = random_floats(n * k * dim, 123);
  auto out = random_floats(n * dim, 124);
  std::vector<float> ref = out;
  cpu::scatter_add_weighted(y.data(), row_token.data(), r.w.data(), ref.data(), n * k, dim);
  DeviceBuffer<float> dy(y), dw(r.w), dout(out);
  DeviceBuffer<int32_t> dtok(row_token);
  TANDEM_ASSERT_OK(scatter_add_weighted(dy.get(), dtok.get(), dw.get(), dout.get(), n * k, dim));
  EXPECT_TRUE(all_close(dout.to_host(), ref, 1e-6f, 1e-6f));

  auto yb = round_bf16(y);
  std::vector<float> refb = out;
  cpu::scatter_add_weighted(yb.data(), row_token.data(), r.w.data(), refb.data(), n * k, dim);
  DeviceBuffer<Bf16> dyb(to_bf16(yb));
  DeviceBuffer<float> doutb(out);
  TANDEM_ASSERT_OK(scatter_add_weighted(dyb.get(), dtok.get(), dw.get(), doutb.get(), n * k, dim));
  EXPECT_TRUE(all_close(doutb.to_host(), refb, 1e-6f, 1e-6f));
}

// Experts with device weights, the host array of pointers the op takes, and
// the CPU twin of the same.
struct Experts {
  int64_t E, hidden, inter;
  std::vector<std::vector<float>> gate, up, down;
  std::vector<std::unique_ptr<DeviceBuffer<float>>> dev;
  std::vector<std::unique_ptr<DeviceBuffer<Bf16>>> dev_b;

  Experts(int64_t e, int64_t h, int64_t i, uint32_t seed) : E(e), hidden(h), inter(i) {
    for (int64_t x = 0; x < E; ++x) {
      // Scaled so activations stay O(1): BF16 error bounds are then meaningful.
      gate.push_back(round_bf16(random_floats(inter * hidden, seed + 3 * x, -0.1f, 0.1f)));
      up.push_back(round_bf16(random_floats(inter * hidden, seed + 3 * x + 1, -0.1f, 0.1f)));
      down.push_back(round_bf16(random_floats(hidden * inter, seed + 3 * x + 2, -0.1f, 0.1f)));
    }
  }
  std::vector<ExpertWeights> host() const {
    std::vector<ExpertWeights> w(E);
    for (int64_t x = 0; x < E; ++x) w[x] = {gate[x].data(), up[x].data(), down[x].data()};
    return w;
  }
  std::vector<ExpertWeights> device() {
    std::vector<ExpertWeights> w(E);
    for (int64_t x = 0; x < E; ++x) {
      for (auto* m : {&gate[x], &up[x], &down[x]}) dev.push_back(std::make_unique<DeviceBuffer<float>>(*m));
      w[x] = {dev[dev.size() - 3]->get(), dev[dev.size() - 2]->get(), dev[dev.size() - 1]->get()};
    }
    return w;
  }
  std::vector<ExpertWeightsBf16> device_bf16() {
    std::vector<ExpertWeightsBf16> w(E);
    for (int64_t x = 0; x < E; ++x) {
      for (auto* m : {&gate[x], &up[x], &down[x]}) dev_b.push_back(std::make_unique<DeviceBuffer<Bf16>>(to_bf16(*m)));
      w[x] = {dev_b[dev_b.size() - 3]->get(), dev_b[dev_b.size() - 2]->get(), dev_b[dev_b.size() - 1]->get()};
    }
    return w;
  }
};

// gate -> permute -> gather -> grouped_swiglu -> scatter, GPU chain vs CPU chain.
TEST_F(MoeCuda, FullMoeLayerMatchesCpu) {
  const int64_t n = 23, E = 8, k = 2, hidden = 128, inter = 96;
  Experts ex(E, hidden, inter, 131);
  auto x = round_bf16(random_floats(n * hidden, 132));
  auto logits = random_floats(n * E, 133, -4.0f, 4.0f);
  // Experts 5..7 get no tokens: their logits are far below the rest.
  for (int64_t t = 0; t < n; ++t)
    for (int64_t e = 5; e < E; ++e) logits[t * E + e] -= 50.0f;
  GateParams p;
  p.num_experts = E;
  p.top_k = k;

  // CPU chain.
  std::vector<int32_t> idx(n * k), off(E + 1), tok(n * k);
  std::vector<float> w(n * k), rw(n * k), xp(n * k * hidden), yp(n * k * hidden), ref(n * hidden, 0.0f);
  cpu::moe_gate_topk(logits.data(), idx.data(), w.data(), n, p);
  cpu::moe_permute(idx.data(), w.data(), n, k, E, off.data(), tok.data(), rw.data());
  cpu::gather_rows(x.data(), tok.data(), xp.data(), n * k, hidden);
  int64_t max_rows = 0;
  for (int64_t e = 0; e < E; ++e) max_rows = std::max<int64_t>(max_rows, off[e + 1] - off[e]);
  ASSERT_EQ(off[E] - off[5], 0);
  std::vector<float> scratch(3 * max_rows * inter);
  auto host_w = ex.host();
  cpu::grouped_swiglu(xp.data(), yp.data(), off.data(), E, host_w.data(), hidden, inter, scratch.data());
  cpu::scatter_add_weighted(yp.data(), tok.data(), rw.data(), ref.data(), n * k, hidden);

  // GPU chain, FP32.
  auto dev_w = ex.device();
  DeviceBuffer<float> dlogits(logits), dx(x), dw(n * k), drw(n * k), dxp(n * k * hidden), dyp(n * k * hidden),
      dout(n * hidden), dscratch(3 * max_rows * inter);
  DeviceBuffer<int32_t> didx(n * k), doff(E + 1), dtok(n * k);
  TANDEM_ASSERT_OK(moe_gate_topk(dlogits.get(), didx.get(), dw.get(), n, p));
  TANDEM_ASSERT_OK(moe_permute(didx.get(), dw.get(), n, k, E, doff.get(), dtok.get(), drw.get()));
  TANDEM_ASSERT_OK(gather_rows(dx.get(), dtok.get(), dxp.get(), n * k, hidden));
  TANDEM_ASSERT_OK(grouped_swiglu(dxp.get(), dyp.get(), doff.get(), E, dev_w.data(), hidden, inter, dscratch.get()));
  TANDEM_ASSERT_OK(scatter_add_weighted(dyp.get(), dtok.get(), drw.get(), dout.get(), n * k, hidden));
  EXPECT_EQ(doff.to_host(), off);
  EXPECT_TRUE(all_close(dyp.to_host(), yp, 1e-4f, 1e-5f * rms(yp)));
  EXPECT_TRUE(all_close(dout.to_host(), ref, 1e-4f, 1e-5f * rms(ref)));

  // BF16 expert FFN on the same permuted rows: intermediates round to BF16.
  auto dev_wb = ex.device_bf16();
  DeviceBuffer<Bf16> dxpb(to_bf16(xp)), dypb(n * k * hidden), dscratchb(3 * max_rows * inter);
  TANDEM_ASSERT_OK(
      grouped_swiglu(dxpb.get(), dypb.get(), doff.get(), E, dev_wb.data(), hidden, inter, dscratchb.get()));
  EXPECT_TRUE(all_close(from_bf16(dypb.to_host()), yp, 3e-2f, 3e-2f * rms(yp)));
}

TEST_F(MoeCuda, GroupedSwigluNullWeightsOnlyForEmptyExperts) {
  const int64_t E = 3, hidden = 32, inter = 16;
  Experts ex(E, hidden, inter, 141);
  auto dev_w = ex.device();
  dev_w[1] = ExpertWeights{};  // expert 1 has no rows: allowed
  std::vector<int32_t> off = {0, 2, 2, 5};
  auto x = random_floats(5 * hidden, 142);
  std::vector<float> ref(5 * hidden), scratch(3 * 3 * inter);
  auto host_w = ex.host();
  host_w[1] = ExpertWeights{};
  cpu::grouped_swiglu(x.data(), ref.data(), off.data(), E, host_w.data(), hidden, inter, scratch.data());
  DeviceBuffer<float> dx(x), dy(5 * hidden), dscratch(3 * 3 * inter);
  DeviceBuffer<int32_t> doff(off);
  TANDEM_ASSERT_OK(grouped_swiglu(dx.get(), dy.get(), doff.get(), E, dev_w.data(), hidden, inter, dscratch.get()));
  EXPECT_TRUE(all_close(dy.to_host(), ref, 1e-4f, 1e-6f));

  // An expert with rows but null weights is an argument error, named.
  std::vector<int32_t> off_bad = {0, 2, 3, 5};
  DeviceBuffer<int32_t> doff_bad(off_bad);
  Status st = grouped_swiglu(dx.get(), dy.get(), doff_bad.get(), E, dev_w.data(), hidden, inter, dscratch.get());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("grouped_swiglu: expert 1"), std::string::npos) << st.message();
}

// All experts batched into grouped GEMMs: the per-expert result, for ragged
// row counts (empty experts, one row, many rows), FP32 and BF16; null weights
// only where an expert has no rows.
TEST_F(MoeCuda, GroupedSwigluBatchedMatchesCpu) {
  const int64_t E = 7, hidden = 96, inter = 64;
  Experts ex(E, hidden, inter, 151);
  const std::vector<int32_t> off = {0, 0, 1, 1, 30, 31, 31, 57};  // experts 0, 2, 5 empty; 1 and 4 one row
  const int64_t rows = off[E];
  auto x = round_bf16(random_floats(rows * hidden, 152));
  std::vector<float> ref(rows * hidden), scratch(3 * 29 * inter);
  auto host_w = ex.host();
  cpu::grouped_swiglu(x.data(), ref.data(), off.data(), E, host_w.data(), hidden, inter, scratch.data());

  auto dev_w = ex.device();
  dev_w[2] = ExpertWeights{};  // no rows: allowed
  DeviceBuffer<float> dx(x), dy(rows * hidden);
  TANDEM_ASSERT_OK(grouped_swiglu_batched(dx.get(), dy.get(), off.data(), E, dev_w.data(), hidden, inter));
  EXPECT_TRUE(all_close(dy.to_host(), ref, 1e-4f, 1e-5f * rms(ref)));

  auto dev_wb = ex.device_bf16();
  DeviceBuffer<Bf16> dxb(to_bf16(x)), dyb(rows * hidden);
  TANDEM_ASSERT_OK(grouped_swiglu_batched(dxb.get(), dyb.get(), off.data(), E, dev_wb.data(), hidden, inter));
  EXPECT_TRUE(all_close(from_bf16(dyb.to_host()), ref, 3e-2f, 3e-2f * rms(ref)));

  // Offsets that start past 0 (a slice of a larger permuted buffer) write only that slice.
  const std::vector<int32_t> tail = {30, 31, 31, 31, 31, 40, 40, 57};
  std::vector<float> ref_tail(rows * hidden, 0.0f);
  cpu::grouped_swiglu(x.data(), ref_tail.data(), tail.data(), E, host_w.data(), hidden, inter, scratch.data());
  DeviceBuffer<float> dy_tail(rows * hidden);
  TANDEM_ASSERT_OK(grouped_swiglu_batched(dx.get(), dy_tail.get(), tail.data(), E, dev_w.data(), hidden, inter));
  const auto got_tail = dy_tail.to_host();
  EXPECT_TRUE(all_close(std::vector<float>(got_tail.begin() + 30 * hidden, got_tail.end()),
                        std::vector<float>(ref_tail.begin() + 30 * hidden, ref_tail.end()), 1e-4f,
                        1e-5f * rms(ref)));

  // Rows but null weights: named.
  const std::vector<int32_t> bad = {0, 0, 1, 2, 30, 31, 31, 57};
  Status st = grouped_swiglu_batched(dx.get(), dy.get(), bad.data(), E, dev_w.data(), hidden, inter);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("grouped_swiglu_batched: expert 2"), std::string::npos) << st.message();
  // Nothing routed: nothing to do.
  const std::vector<int32_t> none(E + 1, 0);
  TANDEM_ASSERT_OK(grouped_swiglu_batched(dx.get(), dy.get(), none.data(), E, dev_w.data(), hidden, inter));
}

// The device-offset kernel (decode's expert path): ragged rows including more
// than one pass of its row tile, empty experts, a slice of a larger buffer,
// vector and scalar loads, FP32 and BF16, against the CPU reference.
// `shift` offsets x_perm's base by that many elements (not 16-byte aligned:
// the scalar path even where the sizes allow vectors).
void check_grouped_device(int64_t E, int64_t hidden, int64_t inter, const std::vector<int32_t>& off,
                          int64_t capacity, uint32_t seed, int64_t shift = 0) {
  Experts ex(E, hidden, inter, seed);
  auto x = round_bf16(random_floats(capacity * hidden, seed + 100));
  int64_t max_rows = 1;
  for (int64_t e = 0; e < E; ++e) max_rows = std::max<int64_t>(max_rows, off[e + 1] - off[e]);
  std::vector<float> ref(capacity * hidden, 0.0f), scratch(3 * max_rows * inter);
  auto host_w = ex.host();
  cpu::grouped_swiglu(x.data(), ref.data(), off.data(), E, host_w.data(), hidden, inter, scratch.data());
  const auto first = static_cast<size_t>(off[0] * hidden), last = static_cast<size_t>(off[E] * hidden);
  auto slice = [&](const std::vector<float>& v) { return std::vector<float>(v.begin() + first, v.begin() + last); };

  auto table = ex.device();
  DeviceBuffer<ExpertWeights> dtable(table);
  DeviceBuffer<int32_t> doff(off);
  std::vector<float> shifted(static_cast<size_t>(shift), 0.0f);
  shifted.insert(shifted.end(), x.begin(), x.end());
  DeviceBuffer<float> dx(shifted), dy(capacity * hidden), dscratch(capacity * inter);
  TANDEM_ASSERT_OK(grouped_swiglu_device(dx.get() + shift, dy.get(), doff.get(), E, dtable.get(), hidden, inter,
                                         capacity, dscratch.get()));
  const auto got = dy.to_host();
  EXPECT_TRUE(all_close(slice(got), slice(ref), 1e-4f, 1e-5f * rms(ref)))
      << "FP32, hidden " << hidden << ", inter " << inter << ", shift " << shift;
  // Rows before the first offset belong to someone else: untouched (zero).
  for (size_t i = 0; i < first; ++i) ASSERT_EQ(got[i], 0.0f) << "element " << i << " before the slice";

  auto table_b = ex.device_bf16();
  DeviceBuffer<ExpertWeightsBf16> dtable_b(table_b);
  DeviceBuffer<Bf16> dxb(to_bf16(shifted)), dyb(capacity * hidden), dscratchb(capacity * inter);
  TANDEM_ASSERT_OK(grouped_swiglu_device(dxb.get() + shift, dyb.get(), doff.get(), E, dtable_b.get(), hidden, inter,
                                         capacity, dscratchb.get()));
  EXPECT_TRUE(all_close(slice(from_bf16(dyb.to_host())), slice(ref), 3e-2f, 3e-2f * rms(ref)))
      << "BF16, hidden " << hidden << ", inter " << inter << ", shift " << shift;
}

TEST_F(MoeCuda, GroupedSwigluDeviceMatchesCpu) {
  // Experts 0, 2, 5 empty; 1 and 4 one row; 3 has 29 rows (four passes of the
  // row tile); 6 has 26.
  check_grouped_device(7, 96, 64, {0, 0, 1, 1, 30, 31, 31, 57}, 57, 161);
  // Sizes that are multiples of 4 floats but not of 8 BF16 (FP32 vectors, BF16
  // scalar), then of neither, then a base that is not 16-byte aligned; none a
  // multiple of the 32-column tile.
  check_grouped_device(5, 36, 44, {0, 3, 3, 12, 13, 21}, 21, 162);
  check_grouped_device(5, 37, 45, {0, 3, 3, 12, 13, 21}, 21, 165);
  check_grouped_device(3, 64, 40, {0, 9, 10, 14}, 14, 166, /*shift=*/1);
  // Offsets starting past 0: only that slice is written.
  check_grouped_device(4, 64, 40, {10, 11, 19, 19, 25}, 25, 163);
  // One token, one expert among many.
  check_grouped_device(64, 128, 96, [] {
    std::vector<int32_t> off(65, 0);
    for (size_t e = 38; e < off.size(); ++e) off[e] = 1;
    return off;
  }(), 1, 164);
}

TEST_F(MoeCuda, GroupedSwigluDeviceNullWeightsAndBadOffsets) {
  const int64_t E = 3, hidden = 32, inter = 16, capacity = 5;
  Experts ex(E, hidden, inter, 171);
  auto table = ex.device();
  table[1] = ExpertWeights{};
  DeviceBuffer<ExpertWeights> dtable(table);
  auto x = random_floats(capacity * hidden, 172);
  DeviceBuffer<float> dx(x), dy(std::vector<float>(capacity * hidden, 7.0f)), dscratch(capacity * inter);
  // Expert 1 has no weights but gets rows 2..3: those rows come out as zeros.
  DeviceBuffer<int32_t> doff(std::vector<int32_t>{0, 2, 3, 5});
  TANDEM_ASSERT_OK(grouped_swiglu_device(dx.get(), dy.get(), doff.get(), E, dtable.get(), hidden, inter, capacity,
                                         dscratch.get()));
  const auto y = dy.to_host();
  for (int64_t c = 0; c < hidden; ++c) EXPECT_EQ(y[2 * hidden + c], 0.0f) << "column " << c;

  // Offsets beyond the buffer (corrupt device data) are clamped: nothing is
  // written past row_capacity and the kernel does not fault.
  DeviceBuffer<float> big(std::vector<float>(2 * capacity * hidden, 7.0f));
  DeviceBuffer<int32_t> wild(std::vector<int32_t>{-4, 2, 1000000, 1 << 30});
  TANDEM_ASSERT_OK(grouped_swiglu_device(dx.get(), big.get(), wild.get(), E, dtable.get(), hidden, inter, capacity,
                                         dscratch.get()));
  const auto b = big.to_host();
  for (int64_t i = capacity * hidden; i < 2 * capacity * hidden; ++i) ASSERT_EQ(b[i], 7.0f) << "element " << i;

  // Argument errors name the op.
  Status st = grouped_swiglu_device(dx.get(), dy.get(), doff.get(), E, dtable.get(), hidden, 0, capacity,
                                    dscratch.get());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("grouped_swiglu_device"), std::string::npos) << st.message();
  st = grouped_swiglu_device(dx.get(), dy.get(), nullptr, E, dtable.get(), hidden, inter, capacity, dscratch.get());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tandem::kernels::cuda::testing
