// CPU reference kernels. Every op here is the numerical reference for its CUDA
// twin in tandem/kernels/cuda.h, which has the same signature over device
// pointers. All tensors are dense, row-major float32 unless stated; shapes are
// given as [dim0, dim1, ...]. Matrix products go through BLAS; the rest is
// threaded where it pays (OpenMP). A zero extent (n = 0 tokens, rows, ...) makes
// any op a no-op. Besides the caller's scratch, ops keep per-thread work
// buffers that grow to the largest shape seen and are reused, so steady-state
// calls do not allocate. Results are deterministic for the same inputs; outside
// the BLAS calls they do not depend on the number of threads either.
#pragma once

#include <cstdint>

#include "tandem/kernels/types.h"

namespace tandem::kernels::cpu {

// The param structs live in types.h so the CUDA twins share them.
using kernels::ExpertWeights;
using kernels::GateParams;
using kernels::GateScoring;
using kernels::PagedKv;
using kernels::SamplingParams;

// y[n, out] = x[n, in] · w[out, in]ᵀ  (PyTorch nn.Linear weight layout).
void linear(const float* x, const float* w, float* y, int64_t n, int64_t in, int64_t out);

// out[i, :] = table[ids[i], :]; table is [vocab, hidden]. ids must be in range.
void embedding(const float* table, const int32_t* ids, float* out, int64_t n, int64_t hidden);

// y[i] = w ⊙ x[i] / sqrt(mean(x[i]²) + eps) for each of n rows of length dim.
// y may alias x.
void rmsnorm(const float* x, const float* w, float* y, int64_t n, int64_t dim, float eps);

// Fused residual add: residual += x; y = rmsnorm(residual) ⊙ w.
void add_rmsnorm(float* residual, const float* x, const float* w, float* y, int64_t n, int64_t dim,
                 float eps);

// Rotary embedding in place, half-split ("NeoX") layout as used by Mixtral/Qwen:
// x is [n, heads, head_dim]; the first rot_dim features of each head rotate,
// pairing feature i with i + rot_dim/2. inv_freq has rot_dim/2 entries; angle =
// positions[t] * inv_freq[i]; cos/sin are multiplied by attention_scaling.
void rope_neox(float* x, const int32_t* positions, const float* inv_freq, int64_t n, int64_t heads,
               int64_t head_dim, int64_t rot_dim, float attention_scaling);

// Writes k, v [n, kv_heads, head_dim] into the cache at slots[t] = block * block_size + offset.
void kv_cache_write(const float* k, const float* v, const int64_t* slots, int64_t n, const PagedKv& cache);

// Causal grouped-query attention for one sequence held contiguously:
// q [n, hq, d], k and v [n, hkv, d] -> out [n, hq, d]. Query head h reads KV head
// h / (hq / hkv). Query i sees keys 0..i.
void attention_prefill(const float* q, const float* k, const float* v, float* out, int64_t n, int64_t hq,
                       int64_t hkv, int64_t d, float scale);

// Grouped-query attention over the paged cache. Query token t (q is [n_tokens, hq, d])
// belongs to sequence seq_of_token[t] and attends to that sequence's positions
// [0, ctx_len[t]). block_tables is [num_seqs, max_blocks_per_seq]: the cache block
// holding positions [j*block_size, (j+1)*block_size) of sequence s is
// block_tables[s * max_blocks_per_seq + j]. Serves decode (ctx_len = pos + 1) and
// prefill after the chunk's K/V were written (ctx_len = pos + 1 per token).
void attention_paged(const float* q, float* out, int64_t n_tokens, int64_t hq, const PagedKv& cache,
                     const int32_t* block_tables, int64_t max_blocks_per_seq, const int32_t* seq_of_token,
                     const int32_t* ctx_len, float scale);

// Router: logits [n, E] (fp32) -> top-k expert indices [n, k] in descending score
// order (ties: lower index first) and their weights [n, k], as HuggingFace does:
//  - softmax: softmax over all E experts, top-k, optional renormalisation by the
//    sum of the k weights (Mixtral, Qwen-MoE), then × routed_scaling.
//  - sigmoid (DeepSeek-V3): s = sigmoid(logit); the choice uses s + correction_bias
//    with grouped selection when n_group > 1 (a group scores the sum of its top-2
//    biased scores, the best topk_group groups stay, the rest are masked to 0.0);
//    the weights are the unbiased s of the chosen, divided by (sum + 1e-20) if
//    renormalize, then × routed_scaling.
// Requires 0 < top_k <= num_experts (otherwise nothing is written).
void moe_gate_topk(const float* logits, int32_t* topk_idx, float* topk_w, int64_t n, const GateParams& p);

// Groups the n*k (token, choice) pairs by expert, stable in token order.
// expert_offsets [E+1]: rows of expert e are [offsets[e], offsets[e+1]).
// row_token [n*k]: the token each permuted row came from; row_weight [n*k]: its gate weight.
void moe_permute(const int32_t* topk_idx, const float* topk_w, int64_t n, int64_t k, int64_t num_experts,
                 int32_t* expert_offsets, int32_t* row_token, float* row_weight);

// out[r, :] = x[rows[r], :] for r < n_rows.
void gather_rows(const float* x, const int32_t* rows, float* out, int64_t n_rows, int64_t dim);

// out[row_token[r], :] += row_weight[r] * y[r, :] (out is not cleared first).
void scatter_add_weighted(const float* y, const int32_t* row_token, const float* row_weight, float* out,
                          int64_t n_rows, int64_t dim);

// out = silu(gate) ⊙ up, elementwise over n*dim.
void silu_mul(const float* gate, const float* up, float* out, int64_t n, int64_t dim);

// Grouped expert FFN: for each expert e, rows [offsets[e], offsets[e+1]) of x_perm
// [rows, hidden] give y_perm rows = down(silu(gate x) ⊙ up x). experts has
// num_experts entries (an expert with no rows may have null weights).
// scratch must hold 3 * max_rows_per_expert * inter floats.
void grouped_swiglu(const float* x_perm, float* y_perm, const int32_t* expert_offsets, int64_t num_experts,
                    const ExpertWeights* experts, int64_t hidden, int64_t inter, float* scratch);

// Picks a token from logits [vocab]. `uniform` is a random number in [0, 1) that
// the caller draws from its seeded generator, so CPU and GPU pick the same token.
// temperature <= 0 or top_k == 1: argmax (ties to the lowest id). Otherwise
// p ∝ exp(logits / temperature) in descending order (ties: lower id first), cut
// to the first top_k (if > 0), then to the shortest prefix whose mass reaches
// top_p of what is left (at least one token); the token is the first in that
// order whose cumulative mass exceeds uniform × the prefix's mass.
// scratch must hold 2 * vocab floats.
int32_t sample(const float* logits, int64_t vocab, const SamplingParams& params, float uniform,
               float* scratch);

// Index of the largest element (lowest index on ties).
int32_t argmax(const float* x, int64_t n);

}  // namespace tandem::kernels::cpu
