// Row gathers and elementwise activations.
#include <cmath>
#include <cstring>

#include "tandem/kernels/cpu.h"

namespace tandem::kernels::cpu {

void embedding(const float* table, const int32_t* ids, float* out, int64_t n, int64_t hidden) {
  if (n <= 0 || hidden <= 0) return;
#pragma omp parallel for schedule(static) if (n > 1 && n * hidden > (int64_t{1} << 16))
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(out + i * hidden, table + static_cast<int64_t>(ids[i]) * hidden,
                static_cast<size_t>(hidden) * sizeof(float));
}

void gather_rows(const float* x, const int32_t* rows, float* out, int64_t n_rows, int64_t dim) {
  // Same operation as an embedding lookup, over activations instead of a table.
  embedding(x, rows, out, n_rows, dim);
}

void silu_mul(const float* gate, const float* up, float* out, int64_t n, int64_t dim) {
  const int64_t total = n * dim;
  if (total <= 0) return;
#pragma omp parallel for schedule(static) if (total > (int64_t{1} << 16))
  for (int64_t i = 0; i < total; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace tandem::kernels::cpu
