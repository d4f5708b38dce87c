// A deliberately plain full-recompute forward pass in double precision, written
// independently of the engine (no KV cache, no BLAS, no kernels library), used as
// the reference that the engine's paged, batched forward must match.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "tandem/model/config.h"
#include "tandem/model/weights.h"

namespace tandem::testing {

using Vec = std::vector<double>;

inline Vec matvec(const float* w, const Vec& x, int64_t out, int64_t in) {
  Vec y(static_cast<size_t>(out), 0.0);
  for (int64_t o = 0; o < out; ++o) {
    double s = 0;
    for (int64_t i = 0; i < in; ++i) s += static_cast<double>(w[o * in + i]) * x[static_cast<size_t>(i)];
    y[static_cast<size_t>(o)] = s;
  }
  return y;
}

inline Vec rms(const Vec& x, const float* w, double eps, size_t off = 0, size_t n = 0) {
  if (n == 0) n = x.size();
  Vec y(x);
  double ss = 0;
  for (size_t i = 0; i < n; ++i) ss += x[off + i] * x[off + i];
  const double r = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
  for (size_t i = 0; i < n; ++i) y[off + i] = x[off + i] * r * w[i];
  return y;
}

inline Vec swiglu(const model::FfnWeights& f, const Vec& x, int64_t H, int64_t I) {
  Vec g = matvec(f.gate, x, I, H), u = matvec(f.up, x, I, H);
  for (int64_t i = 0; i < I; ++i) {
    const double a = g[static_cast<size_t>(i)];
    g[static_cast<size_t>(i)] = a / (1.0 + std::exp(-a)) * u[static_cast<size_t>(i)];
  }
  return matvec(f.down, g, H, I);
}

// Logits [vocab] after the last token of `tokens`.
inline Vec naive_last_logits(const model::ModelConfig& c, const model::ModelWeights& w,
                             const std::vector<int32_t>& tokens) {
  const int64_t T = static_cast<int64_t>(tokens.size()), H = c.hidden_size, D = c.head_dim;
  const int64_t nh = c.num_heads, nkv = c.num_kv_heads, g = nh / nkv;
  std::vector<Vec> h(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t)
    h[static_cast<size_t>(t)] = Vec(w.embed_tokens + tokens[static_cast<size_t>(t)] * H,
                                    w.embed_tokens + (tokens[static_cast<size_t>(t)] + 1) * H);
  auto rope = [&](Vec& x, int64_t heads, int64_t pos) {
    for (int64_t hh = 0; hh < heads; ++hh)
      for (int64_t i = 0; i < D / 2; ++i) {
        const double inv = 1.0 / std::pow(c.rope.theta, 2.0 * static_cast<double>(i) / static_cast<double>(D));
        const double a = static_cast<double>(pos) * inv;
        double& x0 = x[static_cast<size_t>(hh * D + i)];
        double& x1 = x[static_cast<size_t>(hh * D + i + D / 2)];
        const double r0 = x0 * std::cos(a) - x1 * std::sin(a), r1 = x1 * std::cos(a) + x0 * std::sin(a);
        x0 = r0;
        x1 = r1;
      }
  };
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const auto& L = w.layers[static_cast<size_t>(l)];
    std::vector<Vec> q(static_cast<size_t>(T)), k(static_cast<size_t>(T)), v(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
      Vec x = rms(h[static_cast<size_t>(t)], L.input_norm, c.rms_norm_eps);
      q[t] = matvec(L.attn.q, x, nh * D, H);
      k[t] = matvec(L.attn.k, x, nkv * D, H);
      v[t] = matvec(L.attn.v, x, nkv * D, H);
      if (L.attn.q_norm) {
        for (int64_t hh = 0; hh < nh; ++hh) q[t] = rms(q[t], L.attn.q_norm, c.rms_norm_eps, hh * D, D);
        for (int64_t hh = 0; hh < nkv; ++hh) k[t] = rms(k[t], L.attn.k_norm, c.rms_norm_eps, hh * D, D);
      }
      rope(q[t], nh, t);
      rope(k[t], nkv, t);
    }
    for (int64_t t = 0; t < T; ++t) {
      Vec att(static_cast<size_t>(nh * D), 0.0);
      for (int64_t hh = 0; hh < nh; ++hh) {
        const int64_t kh = hh / g;
        Vec s(static_cast<size_t>(t + 1));
        for (int64_t j = 0; j <= t; ++j) {
          double d = 0;
          for (int64_t i = 0; i < D; ++i) d += q[t][hh * D + i] * k[j][kh * D + i];
          s[j] = d / std::sqrt(static_cast<double>(D));
        }
        const double m = *std::max_element(s.begin(), s.end());
        double z = 0;
        for (auto& e : s) z += (e = std::exp(e - m));
        for (int64_t j = 0; j <= t; ++j)
          for (int64_t i = 0; i < D; ++i) att[hh * D + i] += s[j] / z * v[j][kh * D + i];
      }
      Vec o = matvec(L.attn.o, att, H, nh * D);
      for (int64_t i = 0; i < H; ++i) h[t][i] += o[i];
    }
    for (int64_t t = 0; t < T; ++t) {
      Vec x = rms(h[t], L.post_attention_norm, c.rms_norm_eps);
      Vec out(static_cast<size_t>(H), 0.0);
      if (!L.is_moe) {
        out = swiglu(L.dense, x, H, c.dense_intermediate);
      } else {
        const int64_t E = c.moe.num_experts;
        Vec logits = matvec(L.router, x, E, H);
        const double m = *std::max_element(logits.begin(), logits.end());
        double z = 0;
        for (auto& e : logits) z += (e = std::exp(e - m));
        for (auto& e : logits) e /= z;
        std::vector<int64_t> order(static_cast<size_t>(E));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
        double sum = 0;
        for (int64_t j = 0; j < c.moe.top_k; ++j) sum += logits[order[j]];
        for (int64_t j = 0; j < c.moe.top_k; ++j) {
          const double wt = c.moe.norm_topk_prob ? logits[order[j]] / sum : logits[order[j]];
          Vec y = swiglu(L.experts[order[j]], x, H, c.moe.expert_intermediate);
          for (int64_t i = 0; i < H; ++i) out[i] += wt * y[i];
        }
      }
      for (int64_t i = 0; i < H; ++i) h[t][i] += out[i];
    }
  }
  Vec x = rms(h[T - 1], w.final_norm, c.rms_norm_eps);
  return matvec(w.lm_head, x, c.vocab_size, H);
}

}  // namespace tandem::testing
