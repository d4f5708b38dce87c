// Helpers shared by the CPU kernel files; not part of the public contract.
#pragma once

#include <cstdint>
#include <utility>

namespace tandem::kernels::cpu::detail {

// y[:, o0:o1] = x[n, in] · w[o0:o1, in]ᵀ, where y has row stride ldy. Runs on the
// calling thread only: OpenBLAS is kept single-threaded and our OpenMP workers
// each own a slice of output columns.
void gemm_nt_slice(const float* x, const float* w, float* y, int64_t n, int64_t in, int64_t o0, int64_t o1,
                   int64_t ldy);

// Threads worth spending on n*in*out multiply-adds (1 below the size where the
// fork/join costs more than it saves).
int gemm_threads(int64_t n, int64_t in, int64_t out);

// Columns [first, second) of `out` owned by thread t of nt. Slice edges fall on
// multiples of 16 floats so two threads rarely write the same cache line.
std::pair<int64_t, int64_t> column_slice(int64_t out, int t, int nt);

}  // namespace tandem::kernels::cpu::detail
