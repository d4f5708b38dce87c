// Dense ops: matrix products (BLAS), embedding, norms, RoPE, SwiGLU activation.
#include <cblas.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "tandem/kernels/cpu.h"

namespace tandem::kernels::cpu {

void linear(const float* x, const float* w, float* y, int64_t n, int64_t in, int64_t out) {
  if (n <= 0 || out <= 0) return;
  if (in <= 0) {
    std::memset(y, 0, static_cast<size_t>(n * out) * sizeof(float));
    return;
  }
  // y = x · wᵀ with w in nn.Linear [out, in] layout: no transpose copy needed.
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(out),
              static_cast<int>(in), 1.0f, x, static_cast<int>(in), w, static_cast<int>(in), 0.0f, y,
              static_cast<int>(out));
}

void embedding(const float* table, const int32_t* ids, float* out, int64_t n, int64_t hidden) {
#pragma omp parallel for if (n * hidden > (1 << 16))
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(out + i * hidden, table + static_cast<int64_t>(ids[i]) * hidden,
                static_cast<size_t>(hidden) * sizeof(float));
}

namespace {
inline void rmsnorm_row(const float* x, const float* w, float* y, int64_t dim, float eps) {
  double ss = 0;
  for (int64_t j = 0; j < dim; ++j) ss += static_cast<double>(x[j]) * x[j];
  // HF computes the mean of squares in float32; double here only reduces noise.
  const float r = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(dim)) + eps);
  for (int64_t j = 0; j < dim; ++j) y[j] = w[j] * (x[j] * r);
}
}  // namespace

void rmsnorm(const float* x, const float* w, float* y, int64_t n, int64_t dim, float eps) {
#pragma omp parallel for if (n * dim > (1 << 15))
  for (int64_t i = 0; i < n; ++i) rmsnorm_row(x + i * dim, w, y + i * dim, dim, eps);
}

void add_rmsnorm(float* residual, const float* x, const float* w, float* y, int64_t n, int64_t dim, float eps) {
#pragma omp parallel for if (n * dim > (1 << 15))
  for (int64_t i = 0; i < n; ++i) {
    float* r = residual + i * dim;
    const float* xi = x + i * dim;
    for (int64_t j = 0; j < dim; ++j) r[j] += xi[j];
    rmsnorm_row(r, w, y + i * dim, dim, eps);
  }
}

void rope_neox(float* x, const int32_t* positions, const float* inv_freq, int64_t n, int64_t heads,
               int64_t head_dim, int64_t rot_dim, float attention_scaling) {
  const int64_t half = rot_dim / 2;
#pragma omp parallel for if (n * heads * head_dim > (1 << 15))
  for (int64_t t = 0; t < n; ++t) {
    // Angles in float32, as HF computes position * inv_freq before cos/sin.
    std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i) {
      const float a = static_cast<float>(positions[t]) * inv_freq[i];
      cs[i] = std::cos(a) * attention_scaling;
      sn[i] = std::sin(a) * attention_scaling;
    }
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + (t * heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float x0 = v[i], x1 = v[i + half];
        v[i] = x0 * cs[i] - x1 * sn[i];
        v[i + half] = x1 * cs[i] + x0 * sn[i];
      }
    }
  }
}

void silu_mul(const float* gate, const float* up, float* out, int64_t n, int64_t dim) {
  const int64_t total = n * dim;
#pragma omp parallel for if (total > (1 << 16))
  for (int64_t i = 0; i < total; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace tandem::kernels::cpu
