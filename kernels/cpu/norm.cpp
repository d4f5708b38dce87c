// RMSNorm and the fused residual-add + RMSNorm.
#include <cmath>

#include "tandem/kernels/cpu.h"

namespace tandem::kernels::cpu {

namespace {
// Sum of squares in double with eight independent partial sums: a single
// accumulator is a serial chain of adds that leaves the row compute-bound.
inline double sum_squares(const float* x, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += static_cast<double>(x[i + l]) * x[i + l];
  double s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return s;
}

inline void scale_row(const float* x, const float* w, float* y, int64_t dim, double ss, float eps) {
  // HF takes the mean of squares in float32; the double sum only trims rounding noise.
  const float r = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(dim)) + eps);
  for (int64_t j = 0; j < dim; ++j) y[j] = w[j] * (x[j] * r);
}

// Rows are independent and cheap: threads only pay off on large batches.
constexpr int64_t kParallelElems = int64_t{1} << 15;
}  // namespace

void rmsnorm(const float* x, const float* w, float* y, int64_t n, int64_t dim, float eps) {
  if (n <= 0 || dim <= 0) return;
#pragma omp parallel for schedule(static) if (n > 1 && n * dim > kParallelElems)
  for (int64_t i = 0; i < n; ++i) scale_row(x + i * dim, w, y + i * dim, dim, sum_squares(x + i * dim, dim), eps);
}

void add_rmsnorm(float* residual, const float* x, const float* w, float* y, int64_t n, int64_t dim, float eps) {
  if (n <= 0 || dim <= 0) return;
#pragma omp parallel for schedule(static) if (n > 1 && n * dim > kParallelElems)
  for (int64_t i = 0; i < n; ++i) {
    float* r = residual + i * dim;
    const float* xi = x + i * dim;
    for (int64_t j = 0; j < dim; ++j) r[j] += xi[j];
    scale_row(r, w, y + i * dim, dim, sum_squares(r, dim), eps);
  }
}

}  // namespace tandem::kernels::cpu
