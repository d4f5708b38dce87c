// Matrix products: nn.Linear on OpenBLAS, sliced over output columns so one
// OpenMP team drives all the cores.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "cpu/internal.h"
#include "tandem/kernels/cpu.h"

namespace tandem::kernels::cpu {

namespace detail {
namespace {
// OpenBLAS's own pthread pool and our OpenMP threads oversubscribe the cores
// (its workers spin while ours run). One threading model: OpenBLAS runs
// single-threaded inside each OpenMP worker.
const bool kBlasSingleThreaded = [] {
  openblas_set_num_threads(1);
  return true;
}();

// Row-count limits of the three ways to multiply (measured with OpenBLAS 0.3.21
// on the 1024 -> 2816 projection, weights beyond the LLC): per-row gemv wins up
// to two rows, the transposed product up to ~64, plain gemm beyond.
constexpr int64_t kMaxGemvRows = 2;
constexpr int64_t kMaxTransposedRows = 64;
}  // namespace

void gemm_nt_slice(const float* x, const float* w, float* y, int64_t n, int64_t in, int64_t o0, int64_t o1,
                   int64_t ldy) {
  (void)kBlasSingleThreaded;
  if (n <= 0 || o1 <= o0) return;
  if (in <= 0) {
    for (int64_t i = 0; i < n; ++i) std::fill(y + i * ldy + o0, y + i * ldy + o1, 0.0f);
    return;
  }
  const int cols = static_cast<int>(o1 - o0), k = static_cast<int>(in);
  const float* ws = w + o0 * in;
  if (n <= kMaxGemvRows) {
    // One or two rows: gemv streams the weights once, where gemm would first pack them.
    for (int64_t i = 0; i < n; ++i)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, cols, k, 1.0f, ws, k, x + i * in, 1, 0.0f, y + i * ldy + o0, 1);
  } else if (n <= kMaxTransposedRows) {
    // Few rows: OpenBLAS is markedly faster at yᵀ = w·xᵀ (the weights as the
    // tall operand) than at y = x·wᵀ, e.g. 1.5x at 16 rows of 1024 -> 2816.
    // Computing the transpose and copying it back costs less than that.
    thread_local std::vector<float> yt;
    yt.resize(static_cast<size_t>(cols * n));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, cols, static_cast<int>(n), k, 1.0f, ws, k, x, k, 0.0f,
                yt.data(), static_cast<int>(n));
    for (int64_t o = 0; o < cols; ++o)
      for (int64_t i = 0; i < n; ++i) y[i * ldy + o0 + o] = yt[o * n + i];
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), cols, k, 1.0f, x, k, ws, k, 0.0f,
                y + o0, static_cast<int>(ldy));
  }
}

int gemm_threads(int64_t n, int64_t in, int64_t out) {
  return n * in * out < (int64_t{1} << 18) ? 1 : omp_get_max_threads();
}

std::pair<int64_t, int64_t> column_slice(int64_t out, int t, int nt) {
  const int64_t chunk = ((out + nt - 1) / nt + 15) / 16 * 16;
  const int64_t o0 = std::min(out, t * chunk);
  return {o0, std::min(out, o0 + chunk)};
}

}  // namespace detail

void linear(const float* x, const float* w, float* y, int64_t n, int64_t in, int64_t out) {
  if (n <= 0 || out <= 0) return;
#pragma omp parallel num_threads(detail::gemm_threads(n, in, out))
  {
    const auto [o0, o1] = detail::column_slice(out, omp_get_thread_num(), omp_get_num_threads());
    detail::gemm_nt_slice(x, w, y, n, in, o0, o1, out);
  }
}

}  // namespace tandem::kernels::cpu
