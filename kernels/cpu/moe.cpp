// Mixture-of-experts ops: router top-k, permutation of tokens by expert, the
// weighted scatter back, and the grouped SwiGLU expert FFN on BLAS.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/internal.h"
#include "tandem/kernels/cpu.h"

namespace tandem::kernels::cpu {

namespace {
// idx[0, k) = indices of the k largest of v[0, n), descending; ties go to the
// lower index (torch.topk's order for distinct values; a fixed rule for ties).
void top_k(const float* v, int64_t n, int64_t k, int32_t* idx, std::vector<int32_t>& order) {
  order.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = static_cast<int32_t>(i);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [v](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  std::copy_n(order.begin(), k, idx);
}
}  // namespace

void moe_gate_topk(const float* logits, int32_t* topk_idx, float* topk_w, int64_t n, const GateParams& p) {
  const int64_t E = p.num_experts, K = p.top_k;
  if (n <= 0 || E <= 0 || K <= 0 || K > E) return;  // K > E has no meaning; nothing sensible to write
#pragma omp parallel if (n > 1 && n * E > (int64_t{1} << 14))
  {
    thread_local std::vector<float> score, select, group_score;
    thread_local std::vector<int32_t> order, kept_groups;
    score.resize(static_cast<size_t>(E));
    select.resize(static_cast<size_t>(E));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
      const float* l = logits + t * E;
      int32_t* idx = topk_idx + t * K;
      float* w = topk_w + t * K;
      if (p.scoring == GateScoring::kSoftmax) {
        // Softmax over all experts in float32 before the top-k, as HF does.
        const float m = *std::max_element(l, l + E);
        float z = 0.0f;
        for (int64_t e = 0; e < E; ++e) z += (score[e] = std::exp(l[e] - m));
        for (int64_t e = 0; e < E; ++e) score[e] /= z;
      } else {
        for (int64_t e = 0; e < E; ++e) score[e] = 1.0f / (1.0f + std::exp(-l[e]));
      }
      // The correction bias steers the choice only; weights use the raw scores.
      for (int64_t e = 0; e < E; ++e) select[e] = score[e] + (p.correction_bias ? p.correction_bias[e] : 0.0f);
      if (p.n_group > 1) {
        // DeepSeek-V3 grouped selection: a group's score is the sum of its top-2
        // biased scores; the best topk_group groups stay, the others' experts
        // are masked to 0.0 (not -inf, as HF's masked_fill does).
        const int64_t per = E / p.n_group;
        group_score.resize(static_cast<size_t>(p.n_group));
        for (int64_t g = 0; g < p.n_group; ++g) {
          int32_t two[2];
          const int64_t k2 = std::min<int64_t>(2, per);
          top_k(select.data() + g * per, per, k2, two, order);
          float s = 0.0f;
          for (int64_t j = 0; j < k2; ++j) s += select[g * per + two[j]];
          group_score[g] = s;
        }
        const int64_t keep = std::min(p.topk_group, p.n_group);
        kept_groups.resize(static_cast<size_t>(keep));
        top_k(group_score.data(), p.n_group, keep, kept_groups.data(), order);
        for (int64_t g = 0; g < p.n_group; ++g)
          if (std::find(kept_groups.begin(), kept_groups.end(), static_cast<int32_t>(g)) == kept_groups.end())
            std::fill(select.begin() + g * per, select.begin() + (g + 1) * per, 0.0f);
      }
      top_k(select.data(), E, K, idx, order);
      float sum = 0.0f;
      for (int64_t j = 0; j < K; ++j) sum += (w[j] = score[idx[j]]);
      if (p.renormalize) {
        // HF's DeepSeek-V3 guards the division with 1e-20; Mixtral/Qwen do not.
        const float denom = p.scoring == GateScoring::kSigmoid ? sum + 1e-20f : sum;
        for (int64_t j = 0; j < K; ++j) w[j] /= denom;
      }
      for (int64_t j = 0; j < K; ++j) w[j] *= p.routed_scaling;
    }
  }
}

void moe_permute(const int32_t* topk_idx, const float* topk_w, int64_t n, int64_t k, int64_t num_experts,
                 int32_t* expert_offsets, int32_t* row_token, float* row_weight) {
  if (num_experts < 0) return;
  std::fill(expert_offsets, expert_offsets + num_experts + 1, 0);
  if (n <= 0 || k <= 0) return;
  // Counting sort: histogram, exclusive scan, then a stable fill in token order.
  for (int64_t i = 0; i < n * k; ++i) ++expert_offsets[topk_idx[i] + 1];
  for (int64_t e = 0; e < num_experts; ++e) expert_offsets[e + 1] += expert_offsets[e];
  thread_local std::vector<int32_t> next;
  next.assign(expert_offsets, expert_offsets + num_experts);
  for (int64_t i = 0; i < n * k; ++i) {
    const int32_t r = next[topk_idx[i]]++;
    row_token[r] = static_cast<int32_t>(i / k);
    row_weight[r] = topk_w[i];
  }
}

void scatter_add_weighted(const float* y, const int32_t* row_token, const float* row_weight, float* out,
                          int64_t n_rows, int64_t dim) {
  if (n_rows <= 0 || dim <= 0) return;
  // One token's rows sit in several experts' ranges, so splitting rows among
  // threads would race; split the feature dimension instead. Rows are added in
  // permuted order whatever the thread count, so the result is reproducible.
  constexpr int64_t kCols = 64;
#pragma omp parallel for schedule(static) if (n_rows * dim > (int64_t{1} << 16) && dim > kCols)
  for (int64_t j0 = 0; j0 < dim; j0 += kCols) {
    const int64_t j1 = std::min(dim, j0 + kCols);
    for (int64_t r = 0; r < n_rows; ++r) {
      float* o = out + static_cast<int64_t>(row_token[r]) * dim;
      const float* yr = y + r * dim;
      const float w = row_weight[r];
      for (int64_t j = j0; j < j1; ++j) o[j] += w * yr[j];
    }
  }
}

void grouped_swiglu(const float* x_perm, float* y_perm, const int32_t* expert_offsets, int64_t num_experts,
                    const ExpertWeights* experts, int64_t hidden, int64_t inter, float* scratch) {
  if (num_experts <= 0 || hidden <= 0) return;
  const int64_t base = expert_offsets[0], total_rows = expert_offsets[num_experts] - base;
  if (total_rows <= 0) return;
  if (inter <= 0) {
    std::fill(y_perm + base * hidden, y_perm + (base + total_rows) * hidden, 0.0f);
    return;
  }
  int64_t max_rows = 0;
  for (int64_t e = 0; e < num_experts; ++e)
    max_rows = std::max<int64_t>(max_rows, expert_offsets[e + 1] - expert_offsets[e]);
  // One parallel region for all experts; every thread owns a column slice of
  // each projection. Gate and up for a slice need nothing from other threads,
  // so silu(gate)·up is finished in place with no barrier; the down projection
  // needs every column of h and waits for the team once per expert. h
  // alternates between two scratch regions so the next expert's gate/up can
  // start while slower threads still read this expert's h (the barrier of
  // expert e+1 is only passed once everyone finished expert e's down).
  float* const h_region[2] = {scratch, scratch + max_rows * inter};
  float* const up_region = scratch + 2 * max_rows * inter;
#pragma omp parallel num_threads(detail::gemm_threads(total_rows, hidden, 3 * inter))
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const auto [i0, i1] = detail::column_slice(inter, t, nt);
    const auto [h0, h1] = detail::column_slice(hidden, t, nt);
    int parity = 0;
    for (int64_t e = 0; e < num_experts; ++e) {
      const int64_t r0 = expert_offsets[e], rows = expert_offsets[e + 1] - r0;
      if (rows <= 0) continue;  // same decision on every thread: barriers stay matched
      const ExpertWeights& w = experts[e];
      const float* x = x_perm + r0 * hidden;
      float* h = h_region[parity];
      parity ^= 1;
      detail::gemm_nt_slice(x, w.gate, h, rows, hidden, i0, i1, inter);
      detail::gemm_nt_slice(x, w.up, up_region, rows, hidden, i0, i1, inter);
      for (int64_t r = 0; r < rows; ++r) {
        float* hr = h + r * inter;
        const float* ur = up_region + r * inter;
        for (int64_t i = i0; i < i1; ++i) hr[i] = hr[i] / (1.0f + std::exp(-hr[i])) * ur[i];
      }
#pragma omp barrier
      detail::gemm_nt_slice(h, w.down, y_perm + r0 * hidden, rows, inter, h0, h1, hidden);
    }
  }
}

}  // namespace tandem::kernels::cpu
