// Rotary position embedding, half-split (NeoX) layout.
#include <cmath>
#include <vector>

#include "tandem/kernels/cpu.h"

namespace tandem::kernels::cpu {

void rope_neox(float* x, const int32_t* positions, const float* inv_freq, int64_t n, int64_t heads,
               int64_t head_dim, int64_t rot_dim, float attention_scaling) {
  const int64_t half = rot_dim / 2;
  if (n <= 0 || heads <= 0 || half <= 0) return;
#pragma omp parallel if (n > 1 && n * heads * head_dim > (int64_t{1} << 15))
  {
    // cos/sin once per token, shared by all its heads; reused across calls.
    thread_local std::vector<float> table;
    table.resize(static_cast<size_t>(2 * half));
    float* cs = table.data();
    float* sn = cs + half;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
      // The angle is rounded to float32 before cos/sin, as HF computes it.
      for (int64_t i = 0; i < half; ++i) {
        const float a = static_cast<float>(positions[t]) * inv_freq[i];
        cs[i] = std::cos(a) * attention_scaling;
        sn[i] = std::sin(a) * attention_scaling;
      }
      for (int64_t h = 0; h < heads; ++h) {
        float* lo = x + (t * heads + h) * head_dim;
        float* hi = lo + half;
        for (int64_t i = 0; i < half; ++i) {
          const float x0 = lo[i], x1 = hi[i];
          lo[i] = x0 * cs[i] - x1 * sn[i];
          hi[i] = x1 * cs[i] + x0 * sn[i];
        }
      }
    }
  }
}

}  // namespace tandem::kernels::cpu
