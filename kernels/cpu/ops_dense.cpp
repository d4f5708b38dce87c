// Dense ops: matrix products (BLAS), embedding, norms, RoPE, SwiGLU activation.
#include <cblas.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "tandem/kernels/cpu.h"

namespace tandem::kernels::cpu {

namespace {
// OpenBLAS's own threads and our OpenMP threads oversubscribe the cores (its
// pthread pool spins while OpenMP workers run). One threading model: OpenBLAS
// runs single-threaded inside each OpenMP worker, which owns a slice of outputs.
const bool kBlasSingleThreaded = [] {
  openblas_set_num_threads(1);
  return true;
}();
}  // namespace

void linear(const float* x, const float* w, float* y, int64_t n, int64_t in, int64_t out) {
  (void)kBlasSingleThreaded;
  if (n <= 0 || out <= 0) return;
  if (in <= 0) {
    std::memset(y, 0, static_cast<size_t>(n * out) * sizeof(float));
    return;
  }
  // y[:, o0:o1] = x · w[o0:o1]ᵀ per thread; slices of whole cache lines of y.
  const int64_t work = n * in * out;
  const int threads = work < (1 << 18) ? 1 : omp_get_max_threads();
#pragma omp parallel num_threads(threads)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t chunk = ((out + nt - 1) / nt + 15) / 16 * 16;
    const int64_t o0 = std::min(out, t * chunk), o1 = std::min(out, o0 + chunk);
    // One row: a matrix-vector product streams the weights once, where gemm
    // would first pack them.
    if (o1 > o0 && n == 1)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(o1 - o0), static_cast<int>(in), 1.0f, w + o0 * in,
                  static_cast<int>(in), x, 1, 0.0f, y + o0, 1);
    else if (o1 > o0)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(o1 - o0),
                  static_cast<int>(in), 1.0f, x, static_cast<int>(in), w + o0 * in, static_cast<int>(in), 0.0f,
                  y + o0, static_cast<int>(out));
  }
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
