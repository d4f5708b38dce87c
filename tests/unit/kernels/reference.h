// Naive float64 references for the CPU kernels, written independently of them:
// plain loops, no BLAS, no shared code with kernels/cpu.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

namespace tandem::ref {

using VecD = std::vector<double>;

inline std::vector<float> random_vec(std::mt19937& g, size_t n, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// max|a-b| / max(1, max|ref|)
inline double rel_err(const std::vector<float>& got, const VecD& ref) {
  if (got.size() != ref.size()) return INFINITY;
  double scale = 1, err = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    scale = std::max(scale, std::abs(ref[i]));
    const double e = std::abs(static_cast<double>(got[i]) - ref[i]);
    err = std::isnan(e) ? INFINITY : std::max(err, e);
  }
  return err / scale;
}

inline VecD to_double(const std::vector<float>& v) { return VecD(v.begin(), v.end()); }

inline VecD linear(const std::vector<float>& x, const std::vector<float>& w, int64_t n, int64_t in, int64_t out) {
  VecD y(static_cast<size_t>(n * out));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < out; ++o) {
      double s = 0;
      for (int64_t k = 0; k < in; ++k) s += static_cast<double>(x[i * in + k]) * w[o * in + k];
      y[i * out + o] = s;
    }
  return y;
}

inline VecD rmsnorm(const std::vector<float>& x, const std::vector<float>& w, int64_t n, int64_t dim, double eps) {
  VecD y(x.size());
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t j = 0; j < dim; ++j) ss += static_cast<double>(x[i * dim + j]) * x[i * dim + j];
    const double r = 1.0 / std::sqrt(ss / dim + eps);
    for (int64_t j = 0; j < dim; ++j) y[i * dim + j] = x[i * dim + j] * r * w[j];
  }
  return y;
}

// Attention of one query vector against `len` keys/values given by accessor
// lambdas: two passes (max, then exp-sum) in double.
template <typename K, typename V>
void attend(const float* q, int64_t d, int64_t len, double scale, K key, V value, double* out) {
  VecD s(static_cast<size_t>(len));
  double m = -1e300;
  for (int64_t j = 0; j < len; ++j) {
    double dot = 0;
    for (int64_t i = 0; i < d; ++i) dot += static_cast<double>(q[i]) * key(j)[i];
    s[j] = dot * scale;
    m = std::max(m, s[j]);
  }
  double z = 0;
  for (auto& e : s) z += (e = std::exp(e - m));
  for (int64_t i = 0; i < d; ++i) out[i] = 0;
  for (int64_t j = 0; j < len; ++j)
    for (int64_t i = 0; i < d; ++i) out[i] += s[j] / z * value(j)[i];
}

// Candidates of a sampling step in pick order with their probabilities after the
// top-k and top-p cuts (renormalised to sum to 1).
struct Candidate {
  int32_t id;
  double p;
};
inline std::vector<Candidate> sampling_support(const std::vector<float>& logits, double temperature, int top_k,
                                               double top_p) {
  const int64_t n = static_cast<int64_t>(logits.size());
  double m = -1e300;
  for (float l : logits) m = std::max(m, l / temperature);
  std::vector<Candidate> c;
  for (int64_t i = 0; i < n; ++i) c.push_back({static_cast<int32_t>(i), std::exp(logits[i] / temperature - m)});
  std::sort(c.begin(), c.end(), [](const Candidate& a, const Candidate& b) {
    return a.p > b.p || (a.p == b.p && a.id < b.id);
  });
  if (top_k > 0 && top_k < n) c.resize(static_cast<size_t>(top_k));
  double total = 0;
  for (auto& x : c) total += x.p;
  for (auto& x : c) x.p /= total;
  if (top_p < 1.0) {
    double cum = 0;
    size_t keep = c.size();
    for (size_t i = 0; i < c.size(); ++i) {
      cum += c[i].p;
      if (cum >= top_p) {
        keep = i + 1;
        break;
      }
    }
    c.resize(keep);
    for (auto& x : c) x.p /= cum;
  }
  return c;
}

}  // namespace tandem::ref
