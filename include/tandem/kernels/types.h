// Parameter structs shared by the CPU reference kernels (tandem/kernels/cpu.h)
// and their CUDA twins (tandem/kernels/cuda.h). Plain data, C++17-clean, so CUDA
// translation units (compiled as C++17) can include it. Pointers are host
// pointers for the CPU kernels and device pointers for the CUDA ones.
#pragma once

#include <cstdint>

namespace tandem::kernels {

// One layer of a paged KV cache: k and v are each [num_blocks, block_size, kv_heads, head_dim].
struct PagedKv {
  float* k = nullptr;
  float* v = nullptr;
  int64_t num_blocks = 0;
  int64_t block_size = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
};

enum class GateScoring { kSoftmax, kSigmoid };

struct GateParams {
  int64_t num_experts = 0;
  int64_t top_k = 0;
  GateScoring scoring = GateScoring::kSoftmax;
  bool renormalize = true;        // w /= sum(w) over the chosen k
  float routed_scaling = 1.0f;    // multiplies the final weights
  const float* correction_bias = nullptr;  // [E] added for selection only (DeepSeek-V3), or null
  int64_t n_group = 1;            // grouped selection (DeepSeek); 1 = plain top-k
  int64_t topk_group = 1;
};

// One SwiGLU expert's weights, in nn.Linear layout: gate and up [inter, hidden], down [hidden, inter].
struct ExpertWeights {
  const float* gate = nullptr;
  const float* up = nullptr;
  const float* down = nullptr;
};

struct SamplingParams {
  float temperature = 1.0f;  // <= 0: greedy
  int32_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
};

// Whether sampling with `p` is the argmax (ties to the lowest id), whatever the uniform.
inline bool is_greedy(const SamplingParams& p) { return p.temperature <= 0.0f || p.top_k == 1; }

}  // namespace tandem::kernels
