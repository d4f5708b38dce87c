// Matrix products through cuBLAS: linear (FP32 and BF16) and the per-expert
// SwiGLU FFN. Host-only C++: cublasGemmEx does the work.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "check.h"
#include "tandem/kernels/cuda.h"

namespace tandem::kernels::cuda {
namespace {

template <typename T>
constexpr cudaDataType_t data_type();
template <>
constexpr cudaDataType_t data_type<float>() {
  return CUDA_R_32F;
}
template <>
constexpr cudaDataType_t data_type<Bf16>() {
  return CUDA_R_16BF;
}

// Row-major y[n, out] = x[n, in] · w[out, in]ᵀ. cuBLAS is column-major, where
// the same bytes are yᵀ [out, n] = w[in, out]ᵀ · xᵀ [in, n]: op(A) = T on w, B = x.
// FP32 compute for every input type, so BF16 accumulates in FP32.
template <typename TX, typename TY>
Status gemm(const char* op, const TX* x, const TX* w, TY* y, int64_t n, int64_t in, int64_t out) {
  TANDEM_CUDA_REQUIRE(op, n >= 0 && in >= 0 && out >= 0, "negative size");
  TANDEM_CUDA_REQUIRE(op, detail::fits_int(n) && detail::fits_int(in) && detail::fits_int(out),
                      "size over 2^31-1");
  if (n == 0 || out == 0) return Status::ok();
  TANDEM_CUDA_REQUIRE(op, x && w && y, "null pointer");
  if (in == 0) {
    TANDEM_CUDA_CHECK(op, cudaMemsetAsync(y, 0, sizeof(TY) * n * out, detail::stream()));
    return Status::ok();
  }
  TANDEM_ASSIGN_OR_RETURN(cublasHandle_t h, detail::cublas_handle(op));
  const float alpha = 1.0f, beta = 0.0f;
  TANDEM_CUBLAS_CHECK(op, cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(n),
                                       static_cast<int>(in), &alpha, w, data_type<TX>(), static_cast<int>(in),
                                       x, data_type<TX>(), static_cast<int>(in), &beta, y, data_type<TY>(),
                                       static_cast<int>(out), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return Status::ok();
}

template <typename T, typename W>
Status swiglu_host(const T* x_perm, T* y_perm, const int32_t* offsets, int64_t num_experts, const W* experts,
                   int64_t hidden, int64_t inter, T* scratch) {
  const char* op = "grouped_swiglu";
  TANDEM_CUDA_REQUIRE(op, num_experts >= 0 && hidden >= 0 && inter >= 0, "negative size");
  if (num_experts == 0 || hidden == 0) return Status::ok();
  TANDEM_CUDA_REQUIRE(op, offsets && experts, "null offsets or experts");
  int64_t max_rows = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    if (offsets[e] < 0 || offsets[e + 1] < offsets[e]) {
      return invalid_argument(std::string(op) + ": expert_offsets not non-decreasing at expert " +
                              std::to_string(e));
    }
    max_rows = std::max<int64_t>(max_rows, offsets[e + 1] - offsets[e]);
  }
  if (max_rows == 0) return Status::ok();
  if (inter == 0) {  // down(silu(0) * 0) = 0, as the CPU reference
    TANDEM_CUDA_REQUIRE(op, y_perm, "null pointer");
    const int64_t rows = offsets[num_experts] - offsets[0];
    TANDEM_CUDA_CHECK(op, cudaMemsetAsync(y_perm + offsets[0] * hidden, 0, sizeof(T) * rows * hidden,
                                          detail::stream()));
    return Status::ok();
  }
  TANDEM_CUDA_REQUIRE(op, x_perm && y_perm && scratch, "null pointer");
  // Scratch layout [gate | up], each max_rows * inter; the activation overwrites gate.
  T* g = scratch;
  T* u = scratch + max_rows * inter;
  for (int64_t e = 0; e < num_experts; ++e) {
    const int64_t begin = offsets[e], rows = offsets[e + 1] - offsets[e];
    if (rows == 0) continue;
    const W& we = experts[e];
    if (!we.gate || !we.up || !we.down) {
      return invalid_argument(std::string(op) + ": expert " + std::to_string(e) + " has " +
                              std::to_string(rows) + " rows but null weights");
    }
    const T* xe = x_perm + begin * hidden;
    TANDEM_RETURN_IF_ERROR(gemm(op, xe, we.gate, g, rows, hidden, inter));
    TANDEM_RETURN_IF_ERROR(gemm(op, xe, we.up, u, rows, hidden, inter));
    TANDEM_RETURN_IF_ERROR(silu_mul(g, u, g, rows, inter).with_context(op));
    TANDEM_RETURN_IF_ERROR(gemm(op, static_cast<const T*>(g), we.down, y_perm + begin * hidden, rows, inter, hidden));
  }
  return Status::ok();
}

// The same FFN with every expert in one cublasGemmGroupedBatchedEx per stage:
// gate and up of all non-empty experts (2 groups each), one silu_mul over all
// rows, then every down projection. cuBLAS reads the GEMM pointers from device
// arrays (uploaded here, stream-ordered) and the sizes from host arrays.
template <typename T, typename W>
Status swiglu_batched(const T* x_perm, T* y_perm, const int32_t* offsets, int64_t num_experts, const W* experts,
                      int64_t hidden, int64_t inter) {
  const char* op = "grouped_swiglu_batched";
  TANDEM_CUDA_REQUIRE(op, num_experts >= 0 && hidden >= 0 && inter >= 0, "negative size");
  if (num_experts == 0 || hidden == 0) return Status::ok();
  TANDEM_CUDA_REQUIRE(op, offsets && experts, "null offsets or experts");
  TANDEM_CUDA_REQUIRE(op, detail::fits_int(hidden) && detail::fits_int(inter), "size over 2^31-1");
  std::vector<int64_t> used;  // non-empty experts
  for (int64_t e = 0; e < num_experts; ++e) {
    if (offsets[e] < 0 || offsets[e + 1] < offsets[e]) {
      return invalid_argument(std::string(op) + ": expert_offsets not non-decreasing at expert " +
                              std::to_string(e));
    }
    if (offsets[e + 1] == offsets[e]) continue;
    const W& we = experts[e];
    if (!we.gate || !we.up || !we.down) {
      return invalid_argument(std::string(op) + ": expert " + std::to_string(e) + " has " +
                              std::to_string(offsets[e + 1] - offsets[e]) + " rows but null weights");
    }
    used.push_back(e);
  }
  if (used.empty()) return Status::ok();
  const int64_t first = offsets[0], rows = offsets[num_experts] - first;
  TANDEM_CUDA_REQUIRE(op, x_perm && y_perm, "null pointer");
  if (inter == 0) {  // down(silu(0) * 0) = 0, as the CPU reference
    TANDEM_CUDA_CHECK(op, cudaMemsetAsync(y_perm + first * hidden, 0, sizeof(T) * rows * hidden, detail::stream()));
    return Status::ok();
  }
  // [gate | up] of every row; the activation overwrites gate.
  const size_t inner = static_cast<size_t>(rows) * static_cast<size_t>(inter);
  const size_t n_up = 2 * used.size(), n_down = used.size(), n_ptrs = 3 * (n_up + n_down);
  detail::Scratch scratch;
  TANDEM_RETURN_IF_ERROR(scratch.allocate(n_ptrs * sizeof(void*) + 2 * inner * sizeof(T) + 256, op));
  void** dev_ptrs = scratch.as<void*>();
  T* g = reinterpret_cast<T*>(reinterpret_cast<uintptr_t>(scratch.as<char>() + n_ptrs * sizeof(void*) + 255) &
                              ~uintptr_t{255});
  T* u = g + inner;

  std::vector<const void*> ptrs(n_ptrs);
  const void** a_up = ptrs.data();
  const void** b_up = a_up + n_up;
  const void** c_up = b_up + n_up;
  const void** a_dn = c_up + n_up;
  const void** b_dn = a_dn + n_down;
  const void** c_dn = b_dn + n_down;
  std::vector<int> m_up(n_up, static_cast<int>(inter)), n_rows_up(n_up), k_up(n_up, static_cast<int>(hidden));
  std::vector<int> m_dn(n_down, static_cast<int>(hidden)), n_rows_dn(n_down), k_dn(n_down, static_cast<int>(inter));
  for (size_t i = 0; i < used.size(); ++i) {
    const int64_t e = used[i], begin = offsets[e], r = offsets[e + 1] - offsets[e];
    TANDEM_CUDA_REQUIRE(op, detail::fits_int(r), "expert rows over 2^31-1");
    const size_t at = static_cast<size_t>(begin - first) * static_cast<size_t>(inter);
    a_up[2 * i] = experts[e].gate;
    a_up[2 * i + 1] = experts[e].up;
    b_up[2 * i] = b_up[2 * i + 1] = x_perm + begin * hidden;
    c_up[2 * i] = g + at;
    c_up[2 * i + 1] = u + at;
    n_rows_up[2 * i] = n_rows_up[2 * i + 1] = static_cast<int>(r);
    a_dn[i] = experts[e].down;
    b_dn[i] = g + at;
    c_dn[i] = y_perm + begin * hidden;
    n_rows_dn[i] = static_cast<int>(r);
  }
  // Pageable source: the call returns once the pointers are staged.
  TANDEM_CUDA_CHECK(op, cudaMemcpyAsync(dev_ptrs, ptrs.data(), n_ptrs * sizeof(void*), cudaMemcpyHostToDevice,
                                        detail::stream()));
  TANDEM_ASSIGN_OR_RETURN(cublasHandle_t h, detail::cublas_handle(op));
  const size_t n_max = std::max(n_up, n_down);
  const std::vector<cublasOperation_t> op_t(n_max, CUBLAS_OP_T), op_n(n_max, CUBLAS_OP_N);
  const std::vector<float> ones(n_max, 1.0f), zeros(n_max, 0.0f);
  const std::vector<int> group_size(n_max, 1);
  // Row-major y = x · wᵀ as in gemm(): column-major yᵀ = op_T(w) · xᵀ.
  const std::vector<int> ld_hidden(n_max, static_cast<int>(hidden)), ld_inter(n_max, static_cast<int>(inter));
  const cudaDataType_t type = data_type<T>();
  TANDEM_CUBLAS_CHECK(op, cublasGemmGroupedBatchedEx(
                              h, op_t.data(), op_n.data(), m_up.data(), n_rows_up.data(), k_up.data(), ones.data(),
                              dev_ptrs, type, ld_hidden.data(), dev_ptrs + n_up, type, ld_hidden.data(), zeros.data(),
                              dev_ptrs + 2 * n_up, type, ld_inter.data(), static_cast<int>(n_up), group_size.data(), CUBLAS_COMPUTE_32F));
  TANDEM_RETURN_IF_ERROR(silu_mul(g, u, g, rows, inter).with_context(op));
  void** dn = dev_ptrs + 3 * n_up;
  TANDEM_CUBLAS_CHECK(op, cublasGemmGroupedBatchedEx(
                              h, op_t.data(), op_n.data(), m_dn.data(), n_rows_dn.data(), k_dn.data(), ones.data(),
                              dn, type, ld_inter.data(), dn + n_down, type, ld_inter.data(), zeros.data(),
                              dn + 2 * n_down, type, ld_hidden.data(), static_cast<int>(n_down), group_size.data(), CUBLAS_COMPUTE_32F));
  return Status::ok();
}

template <typename T, typename W>
Status swiglu_device(const T* x_perm, T* y_perm, const int32_t* expert_offsets, int64_t num_experts,
                     const W* experts, int64_t hidden, int64_t inter, T* scratch) {
  const char* op = "grouped_swiglu";
  TANDEM_CUDA_REQUIRE(op, num_experts >= 0 && hidden >= 0, "negative size");
  if (num_experts == 0 || hidden == 0) return Status::ok();
  TANDEM_CUDA_REQUIRE(op, expert_offsets, "null expert_offsets");
  TANDEM_ASSIGN_OR_RETURN(const void* host,
                          detail::read_back(expert_offsets, sizeof(int32_t) * (num_experts + 1), op));
  return swiglu_host(x_perm, y_perm, static_cast<const int32_t*>(host), num_experts, experts, hidden, inter,
                     scratch);
}

}  // namespace

Status grouped_swiglu_batched(const float* x_perm, float* y_perm, const int32_t* host_offsets, int64_t num_experts,
                              const ExpertWeights* experts, int64_t hidden, int64_t inter) {
  return swiglu_batched(x_perm, y_perm, host_offsets, num_experts, experts, hidden, inter);
}
Status grouped_swiglu_batched(const Bf16* x_perm, Bf16* y_perm, const int32_t* host_offsets, int64_t num_experts,
                              const ExpertWeightsBf16* experts, int64_t hidden, int64_t inter) {
  return swiglu_batched(x_perm, y_perm, host_offsets, num_experts, experts, hidden, inter);
}

Status linear(const float* x, const float* w, float* y, int64_t n, int64_t in, int64_t out) {
  return gemm("linear", x, w, y, n, in, out);
}
Status linear(const Bf16* x, const Bf16* w, Bf16* y, int64_t n, int64_t in, int64_t out) {
  return gemm("linear", x, w, y, n, in, out);
}
Status linear(const Bf16* x, const Bf16* w, float* y, int64_t n, int64_t in, int64_t out) {
  return gemm("linear", x, w, y, n, in, out);
}

Status grouped_swiglu(const float* x_perm, float* y_perm, const int32_t* expert_offsets, int64_t num_experts,
                      const ExpertWeights* experts, int64_t hidden, int64_t inter, float* scratch) {
  return swiglu_device(x_perm, y_perm, expert_offsets, num_experts, experts, hidden, inter, scratch);
}
Status grouped_swiglu(const Bf16* x_perm, Bf16* y_perm, const int32_t* expert_offsets, int64_t num_experts,
                      const ExpertWeightsBf16* experts, int64_t hidden, int64_t inter, Bf16* scratch) {
  return swiglu_device(x_perm, y_perm, expert_offsets, num_experts, experts, hidden, inter, scratch);
}
Status grouped_swiglu_host_offsets(const float* x_perm, float* y_perm, const int32_t* host_offsets,
                                   int64_t num_experts, const ExpertWeights* experts, int64_t hidden,
                                   int64_t inter, float* scratch) {
  return swiglu_host(x_perm, y_perm, host_offsets, num_experts, experts, hidden, inter, scratch);
}
Status grouped_swiglu_host_offsets(const Bf16* x_perm, Bf16* y_perm, const int32_t* host_offsets,
                                   int64_t num_experts, const ExpertWeightsBf16* experts, int64_t hidden,
                                   int64_t inter, Bf16* scratch) {
  return swiglu_host(x_perm, y_perm, host_offsets, num_experts, experts, hidden, inter, scratch);
}

}  // namespace tandem::kernels::cuda
