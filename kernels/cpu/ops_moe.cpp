// Mixture-of-experts ops: router top-k, permutation of tokens by expert, and the
// grouped SwiGLU expert FFN on BLAS.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "tandem/kernels/cpu.h"

namespace tandem::kernels::cpu {

namespace {
// Indices of the k largest values, descending; ties go to the lower index.
void top_k(const float* v, int64_t n, int64_t k, int32_t* idx) {
  std::vector<int32_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = static_cast<int32_t>(i);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
    return v[a] > v[b] || (v[a] == v[b] && a < b);
  });
  std::copy_n(order.begin(), k, idx);
}
}  // namespace

void moe_gate_topk(const float* logits, int32_t* topk_idx, float* topk_w, int64_t n, const GateParams& p) {
  const int64_t E = p.num_experts, K = p.top_k;
#pragma omp parallel for if (n * E > (1 << 14))
  for (int64_t t = 0; t < n; ++t) {
    const float* l = logits + t * E;
    int32_t* idx = topk_idx + t * K;
    float* w = topk_w + t * K;
    std::vector<float> score(static_cast<size_t>(E));
    if (p.scoring == GateScoring::kSoftmax) {
      // Softmax over all experts in float32, as HF does, then top-k.
      const float m = *std::max_element(l, l + E);
      float z = 0;
      for (int64_t e = 0; e < E; ++e) z += (score[e] = std::exp(l[e] - m));
      for (auto& s : score) s /= z;
    } else {
      for (int64_t e = 0; e < E; ++e) score[e] = 1.0f / (1.0f + std::exp(-l[e]));
    }
    std::vector<float> select(score);
    if (p.correction_bias)
      for (int64_t e = 0; e < E; ++e) select[e] += p.correction_bias[e];
    if (p.n_group > 1) {
      // DeepSeek grouped selection: rank groups by the sum of their top-2 biased
      // scores, keep topk_group groups, zero the rest (0.0, not -inf, as HF does).
      const int64_t per = E / p.n_group;
      std::vector<float> gscore(static_cast<size_t>(p.n_group));
      for (int64_t g = 0; g < p.n_group; ++g) {
        int32_t two[2];
        top_k(select.data() + g * per, per, std::min<int64_t>(2, per), two);
        gscore[g] = select[g * per + two[0]] + (per > 1 ? select[g * per + two[1]] : 0.0f);
      }
      std::vector<int32_t> keep(static_cast<size_t>(p.topk_group));
      top_k(gscore.data(), p.n_group, p.topk_group, keep.data());
      std::vector<bool> kept(static_cast<size_t>(p.n_group), false);
      for (int32_t g : keep) kept[g] = true;
      for (int64_t e = 0; e < E; ++e)
        if (!kept[e / per]) select[e] = 0.0f;
    }
    top_k(select.data(), E, K, idx);
    float sum = 0;
    for (int64_t j = 0; j < K; ++j) sum += (w[j] = score[idx[j]]);
    if (p.renormalize) {
      const float denom = p.scoring == GateScoring::kSigmoid ? sum + 1e-20f : sum;
      for (int64_t j = 0; j < K; ++j) w[j] /= denom;
    }
    for (int64_t j = 0; j < K; ++j) w[j] *= p.routed_scaling;
  }
}

void moe_permute(const int32_t* topk_idx, const float* topk_w, int64_t n, int64_t k, int64_t num_experts,
                 int32_t* expert_offsets, int32_t* row_token, float* row_weight) {
  std::fill(expert_offsets, expert_offsets + num_experts + 1, 0);
  for (int64_t i = 0; i < n * k; ++i) ++expert_offsets[topk_idx[i] + 1];
  for (int64_t e = 0; e < num_experts; ++e) expert_offsets[e + 1] += expert_offsets[e];
  std::vector<int32_t> fill(expert_offsets, expert_offsets + num_experts);
  for (int64_t i = 0; i < n * k; ++i) {  // token order within each expert: stable
    const int32_t r = fill[topk_idx[i]]++;
    row_token[r] = static_cast<int32_t>(i / k);
    row_weight[r] = topk_w[i];
  }
}

void gather_rows(const float* x, const int32_t* rows, float* out, int64_t n_rows, int64_t dim) {
#pragma omp parallel for if (n_rows * dim > (1 << 16))
  for (int64_t r = 0; r < n_rows; ++r) std::copy_n(x + static_cast<int64_t>(rows[r]) * dim, dim, out + r * dim);
}

void scatter_add_weighted(const float* y, const int32_t* row_token, const float* row_weight, float* out,
                          int64_t n_rows, int64_t dim) {
  // Rows of one token may sit in several experts' ranges: parallelise over the
  // feature dimension so no two threads touch the same output element.
#pragma omp parallel for if (n_rows * dim > (1 << 16))
  for (int64_t j0 = 0; j0 < dim; j0 += 64) {
    const int64_t j1 = std::min(dim, j0 + 64);
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
  for (int64_t e = 0; e < num_experts; ++e) {
    const int64_t r0 = expert_offsets[e], rows = expert_offsets[e + 1] - r0;
    if (rows <= 0) continue;
    const ExpertWeights& w = experts[e];
    float* gate = scratch;
    float* up = scratch + rows * inter;
    linear(x_perm + r0 * hidden, w.gate, gate, rows, hidden, inter);
    linear(x_perm + r0 * hidden, w.up, up, rows, hidden, inter);
    silu_mul(gate, up, gate, rows, inter);
    linear(gate, w.down, y_perm + r0 * hidden, rows, inter, hidden);
  }
}

}  // namespace tandem::kernels::cpu
