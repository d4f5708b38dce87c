// CUDA kernels: the GPU twins of tandem/kernels/cpu.h. Each op has the same name
// and parameter list as its CPU reference, over device pointers (the params
// structs' pointers are device pointers too), and returns a Status instead of
// void: a launch or cuBLAS failure names the op ("rmsnorm: ... failed: ...").
//
// Streams: work is enqueued on the calling thread's current stream (set_stream),
// never with a device-wide synchronisation. Ops that hand a value back to the
// host (sample, argmax) or need host-side sizes (grouped_swiglu) synchronise
// that stream only. The default stream is cudaStreamPerThread.
//
// Scratch: ops that need device work space beyond their arguments (split
// attention_paged, moe_permute, sample, argmax) take it stream-ordered from a
// library-owned memory pool that keeps freed blocks, so steady-state calls do
// not hit cudaMalloc and the space is safe to reuse whatever stream comes next.
//
// Precision: the float overloads compute in FP32 (cuBLAS without TF32), so they
// match the CPU reference to rounding. The Bf16 overloads take BF16 weights and
// activations, accumulate in FP32 and round once on store.
//
// This header does not include any CUDA header, so plain C++ code can call the
// kernels; it is C++17-clean because the .cu files are compiled as C++17.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "tandem/common/status.h"
#include "tandem/kernels/types.h"

namespace tandem::kernels::cuda {

using kernels::ExpertWeights;
using kernels::GateParams;
using kernels::GateScoring;
using kernels::PagedKv;
using kernels::SamplingParams;

// Raw bfloat16 bits, layout-identical to __nv_bfloat16 and to the checkpoint's
// BF16 (tandem::float_to_bf16 / bf16_to_float convert on the host). A distinct
// type rather than uint16_t so BF16 and F16 overloads can never be confused.
struct Bf16 {
  uint16_t bits;
};
static_assert(sizeof(Bf16) == 2, "Bf16 must be two bytes");

// BF16 paged KV cache, same layout as PagedKv.
struct PagedKvBf16 {
  Bf16* k = nullptr;
  Bf16* v = nullptr;
  int64_t num_blocks = 0;
  int64_t block_size = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
};

// BF16 SwiGLU expert weights, same layout as ExpertWeights.
struct ExpertWeightsBf16 {
  const Bf16* gate = nullptr;
  const Bf16* up = nullptr;
  const Bf16* down = nullptr;
};

// ---- Device, streams, memory ------------------------------------------------

// Sets the cudaStream_t (passed as void*) this thread enqueues on; nullptr
// restores the default, cudaStreamPerThread. Per thread, so engine threads
// driving different streams never share one by accident.
void set_stream(void* cuda_stream);
void* current_stream();

// Restores the previous stream of this thread when it goes out of scope.
class StreamGuard {
 public:
  explicit StreamGuard(void* cuda_stream) : prev_(current_stream()) { set_stream(cuda_stream); }
  ~StreamGuard() { set_stream(prev_); }
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  void* prev_;
};

// Number of visible devices; an error (with cudaGetErrorString's text) when the
// driver or device is missing, so callers and tests can say why.
Result<int> device_count();

struct MemoryInfo {
  size_t free_bytes = 0;
  size_t total_bytes = 0;
};

struct DeviceInfo {
  int device = 0;             // ordinal of the current device
  std::string name;           // "NVIDIA H100 80GB HBM3"
  int cc_major = 0;           // compute capability
  int cc_minor = 0;
  int multiprocessors = 0;
  int driver_version = 0;     // e.g. 13000
  int runtime_version = 0;
  MemoryInfo memory;          // at the time of the call
};

// The current device of the calling thread.
Result<DeviceInfo> device_info();
Result<MemoryInfo> memory_info();
// OK if `bytes` fit in the current device's free memory; otherwise
// RESOURCE_EXHAUSTED "<what>: asked <bytes> bytes, <free> free of <total>".
Status check_free_memory(size_t bytes, std::string_view what);
// "1.50 GiB" style, for messages.
std::string format_bytes(size_t bytes);

// Waits for the current stream (not the device).
Status synchronize();

// Memory owned by one object, move-only: device memory (cudaMalloc /
// cudaFree) for long-lived data (weights, KV cache, activations of a runner),
// not scratch; or page-locked host memory (cudaMallocHost / cudaFreeHost) for
// staging buffers whose copies overlap work on the device (an asynchronous
// copy from or to pageable memory is not asynchronous).
enum class MemoryKind { kDevice, kPinnedHost };

template <MemoryKind Kind>
class OwnedBuffer {
 public:
  OwnedBuffer() = default;
  // RESOURCE_EXHAUSTED naming `what`, the size asked and (device) the memory
  // free when it cannot be had.
  static Result<OwnedBuffer> allocate(size_t bytes, std::string_view what);
  OwnedBuffer(OwnedBuffer&& other) noexcept : ptr_(other.ptr_), bytes_(other.bytes_) {
    other.ptr_ = nullptr;
    other.bytes_ = 0;
  }
  OwnedBuffer& operator=(OwnedBuffer&& other) noexcept {
    if (this != &other) {
      release();
      ptr_ = other.ptr_;
      bytes_ = other.bytes_;
      other.ptr_ = nullptr;
      other.bytes_ = 0;
    }
    return *this;
  }
  OwnedBuffer(const OwnedBuffer&) = delete;
  OwnedBuffer& operator=(const OwnedBuffer&) = delete;
  ~OwnedBuffer() { release(); }

  void* data() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t size() const { return bytes_; }

 private:
  void release();
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

using DeviceBuffer = OwnedBuffer<MemoryKind::kDevice>;
using PinnedBuffer = OwnedBuffer<MemoryKind::kPinnedHost>;
// Defined in runtime.cpp.
template <>
Result<DeviceBuffer> DeviceBuffer::allocate(size_t bytes, std::string_view what);
template <>
void DeviceBuffer::release();
template <>
Result<PinnedBuffer> PinnedBuffer::allocate(size_t bytes, std::string_view what);
template <>
void PinnedBuffer::release();

// Makes `ordinal` the calling thread's current device: FAILED_PRECONDITION
// naming the device count when there is no such device.
Status set_device(int ordinal);

// Copies on the current stream. To the device from pageable host memory, the
// call returns once the source may be reused; to the host it waits for the
// stream, so the data is there on return.
Status copy_to_device(void* dst, const void* src, size_t bytes);
Status copy_to_host(void* dst, const void* src, size_t bytes);
// Enqueued only: `dst` (pinned memory, for the copy to overlap) holds the data
// once the stream has reached this point (synchronize()).
Status copy_to_host_async(void* dst, const void* src, size_t bytes);
// Zeroes device memory on the current stream.
Status fill_zero(void* dst, size_t bytes);

// ---- Streams and events ------------------------------------------------------------

// A non-blocking stream of its own (cudaStreamCreateWithFlags), for work that
// must not queue behind the thread's current stream: a data plane's sends and
// receives beside the compute they feed. Move-only.
class Stream {
 public:
  Stream() = default;
  static Result<Stream> create(std::string_view what);
  Stream(Stream&& other) noexcept : s_(other.s_) { other.s_ = nullptr; }
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream();
  void* get() const { return s_; }  // cudaStream_t

 private:
  void* s_ = nullptr;
};

// A timing-free event: orders work across streams (record on one, wait on
// another) and lets the host poll completion with its own deadline instead of
// blocking in cudaStreamSynchronize. Move-only.
class Event {
 public:
  Event() = default;
  static Result<Event> create(std::string_view what);
  Event(Event&& other) noexcept : e_(other.e_) { other.e_ = nullptr; }
  Event& operator=(Event&& other) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event();

  // nullptr = the calling thread's current stream.
  Status record(void* stream = nullptr);
  // Work enqueued on `stream` after this waits for the recorded point.
  Status enqueue_wait(void* stream = nullptr) const;
  // True once the recorded work is done (also before any record).
  Result<bool> done() const;
  // Polls done() until it is true or `timeout` passes (DEADLINE_EXCEEDED
  // naming `what`), sleeping briefly between polls.
  Status wait_for(std::chrono::microseconds timeout, std::string_view what) const;

 private:
  void* e_ = nullptr;
};

// ---- CUDA graphs -----------------------------------------------------------------

// Work captured from the current stream once and replayed with one launch,
// which saves the per-kernel launch cost of short, repeated sequences (a decode
// step's layer). Move-only; the graph keeps the device pointers and sizes it
// was captured with, so the caller replays it only while those still hold.
class Graph {
 public:
  Graph() = default;
  // Runs `work` under stream capture (thread-local mode: other threads are
  // not affected) and instantiates what it enqueued; nothing runs yet. An
  // error of `work`, or work that cannot be captured (an allocation or a
  // synchronisation inside it), is returned, and the stream is usable again.
  static Result<Graph> capture(const std::function<Status()>& work);
  Graph(Graph&& other) noexcept;
  Graph& operator=(Graph&& other) noexcept;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  ~Graph();

  // Enqueues the captured work on the current stream.
  Status launch() const;
  bool empty() const { return exec_ == nullptr; }

 private:
  void release();
  void* graph_ = nullptr;  // cudaGraph_t
  void* exec_ = nullptr;   // cudaGraphExec_t
};

// ---- Dense ops ----------------------------------------------------------------

// y[n, out] = x[n, in] · w[out, in]ᵀ (cuBLAS, FP32 compute).
Status linear(const float* x, const float* w, float* y, int64_t n, int64_t in, int64_t out);
Status linear(const Bf16* x, const Bf16* w, Bf16* y, int64_t n, int64_t in, int64_t out);
// BF16 inputs with an FP32 result, for the router and the LM head.
Status linear(const Bf16* x, const Bf16* w, float* y, int64_t n, int64_t in, int64_t out);

Status embedding(const float* table, const int32_t* ids, float* out, int64_t n, int64_t hidden);
Status embedding(const Bf16* table, const int32_t* ids, Bf16* out, int64_t n, int64_t hidden);

// y may alias x.
Status rmsnorm(const float* x, const float* w, float* y, int64_t n, int64_t dim, float eps);
Status rmsnorm(const Bf16* x, const Bf16* w, Bf16* y, int64_t n, int64_t dim, float eps);

// residual += x (rounded to the residual's type, as torch does); y = rmsnorm(residual) ⊙ w.
Status add_rmsnorm(float* residual, const float* x, const float* w, float* y, int64_t n, int64_t dim,
                   float eps);
Status add_rmsnorm(Bf16* residual, const Bf16* x, const Bf16* w, Bf16* y, int64_t n, int64_t dim,
                   float eps);

// In place; cos/sin computed in FP32 from positions * inv_freq.
Status rope_neox(float* x, const int32_t* positions, const float* inv_freq, int64_t n, int64_t heads,
                 int64_t head_dim, int64_t rot_dim, float attention_scaling);
Status rope_neox(Bf16* x, const int32_t* positions, const float* inv_freq, int64_t n, int64_t heads,
                 int64_t head_dim, int64_t rot_dim, float attention_scaling);

// ---- Attention ------------------------------------------------------------------

// A negative slot skips that token (the padding convention of vLLM).
Status kv_cache_write(const float* k, const float* v, const int64_t* slots, int64_t n, const PagedKv& cache);
Status kv_cache_write(const Bf16* k, const Bf16* v, const int64_t* slots, int64_t n, const PagedKvBf16& cache);

// Tiled causal GQA (online softmax, FP32 SIMT math). head_dim <= 256.
Status attention_prefill(const float* q, const float* k, const float* v, float* out, int64_t n, int64_t hq,
                         int64_t hkv, int64_t d, float scale);
Status attention_prefill(const Bf16* q, const Bf16* k, const Bf16* v, Bf16* out, int64_t n, int64_t hq,
                         int64_t hkv, int64_t d, float scale);

// One thread block per (token, kv head, up to 8 query heads of its group), so each
// K/V row is read once for the whole group; when that gives too few blocks to fill
// the GPU, the context is split across blocks (flash-decoding) and the partial
// results merged by a second kernel. The split is sized from max_blocks_per_seq
// (context lengths stay on the device). head_dim <= 256. A token with ctx_len 0
// gets zeros.
Status attention_paged(const float* q, float* out, int64_t n_tokens, int64_t hq, const PagedKv& cache,
                       const int32_t* block_tables, int64_t max_blocks_per_seq, const int32_t* seq_of_token,
                       const int32_t* ctx_len, float scale);
Status attention_paged(const Bf16* q, Bf16* out, int64_t n_tokens, int64_t hq, const PagedKvBf16& cache,
                       const int32_t* block_tables, int64_t max_blocks_per_seq, const int32_t* seq_of_token,
                       const int32_t* ctx_len, float scale);

// ---- MoE --------------------------------------------------------------------------

// Router logits are FP32 (HF computes the gate in FP32 for the models that care).
// One warp per token; num_experts <= 4096.
Status moe_gate_topk(const float* logits, int32_t* topk_idx, float* topk_w, int64_t n, const GateParams& p);

// Stable radix sort of the (token, choice) pairs by expert (CUB), then a binary
// search per expert for the offsets. Expert ids must be in [0, num_experts).
Status moe_permute(const int32_t* topk_idx, const float* topk_w, int64_t n, int64_t k, int64_t num_experts,
                   int32_t* expert_offsets, int32_t* row_token, float* row_weight);

Status gather_rows(const float* x, const int32_t* rows, float* out, int64_t n_rows, int64_t dim);
Status gather_rows(const Bf16* x, const int32_t* rows, Bf16* out, int64_t n_rows, int64_t dim);

// FP32 atomicAdd, so the summation order across a token's k rows is not fixed
// (results can differ in the last bits run to run). The Bf16 overload reads BF16
// expert outputs and still accumulates into an FP32 `out`.
Status scatter_add_weighted(const float* y, const int32_t* row_token, const float* row_weight, float* out,
                            int64_t n_rows, int64_t dim);
Status scatter_add_weighted(const Bf16* y, const int32_t* row_token, const float* row_weight, float* out,
                            int64_t n_rows, int64_t dim);

Status silu_mul(const float* gate, const float* up, float* out, int64_t n, int64_t dim);
Status silu_mul(const Bf16* gate, const Bf16* up, Bf16* out, int64_t n, int64_t dim);

// `experts` is a HOST array of num_experts entries holding device pointers.
// expert_offsets is on the device: it is copied to the host (a synchronisation
// of the current stream) because cuBLAS needs each expert's row count on the
// host; then each non-empty expert runs gate/up GEMMs, silu_mul and the down GEMM.
// (cublasGemmGroupedBatchedEx also takes its sizes from host arrays, so it would
// not remove that copy; batching experts into it is a later optimisation.)
// scratch: 3 * max_rows_per_expert * inter elements, as on the CPU.
Status grouped_swiglu(const float* x_perm, float* y_perm, const int32_t* expert_offsets, int64_t num_experts,
                      const ExpertWeights* experts, int64_t hidden, int64_t inter, float* scratch);
Status grouped_swiglu(const Bf16* x_perm, Bf16* y_perm, const int32_t* expert_offsets, int64_t num_experts,
                      const ExpertWeightsBf16* experts, int64_t hidden, int64_t inter, Bf16* scratch);
// Same with the offsets already on the host (num_experts + 1 entries): no synchronisation.
Status grouped_swiglu_host_offsets(const float* x_perm, float* y_perm, const int32_t* host_offsets,
                                   int64_t num_experts, const ExpertWeights* experts, int64_t hidden,
                                   int64_t inter, float* scratch);
Status grouped_swiglu_host_offsets(const Bf16* x_perm, Bf16* y_perm, const int32_t* host_offsets,
                                   int64_t num_experts, const ExpertWeightsBf16* experts, int64_t hidden,
                                   int64_t inter, Bf16* scratch);

// The same with every expert's GEMMs batched into one cublasGemmGroupedBatchedEx
// per stage (gate and up of all experts, then all down projections) and one
// silu_mul over all rows: three launches instead of four per expert, which
// matters when many experts each get few rows. Offsets on the host
// (num_experts + 1 entries); its scratch (2 * rows * inter, plus the GEMM
// pointer arrays) comes from the stream-ordered pool.
Status grouped_swiglu_batched(const float* x_perm, float* y_perm, const int32_t* host_offsets, int64_t num_experts,
                              const ExpertWeights* experts, int64_t hidden, int64_t inter);
Status grouped_swiglu_batched(const Bf16* x_perm, Bf16* y_perm, const int32_t* host_offsets, int64_t num_experts,
                              const ExpertWeightsBf16* experts, int64_t hidden, int64_t inter);

// The same SwiGLU with nothing on the host: expert_offsets (num_experts + 1)
// and `experts` (num_experts entries of device pointers) are both in DEVICE
// memory, so routing never comes back to the host and a layer running it can
// be captured in a CUDA graph. Our own weight-streaming kernel (two launches:
// gate/up with the SiLU fused, then down), built for decode, where each expert
// gets a few rows: it reads each weight once per 8 rows, so it loses to the
// cuBLAS paths when experts get many rows (prefill).
// row_capacity: rows of x_perm / y_perm; offsets are clamped to it (they come
// from the device and are not checked on the host). scratch: row_capacity *
// inter elements. Rows of an expert whose weights are null come out as zeros
// (the host paths report that as an error; this one cannot without a
// synchronisation), so give every expert that can be routed to its weights.
Status grouped_swiglu_device(const float* x_perm, float* y_perm, const int32_t* expert_offsets, int64_t num_experts,
                             const ExpertWeights* experts, int64_t hidden, int64_t inter, int64_t row_capacity,
                             float* scratch);
Status grouped_swiglu_device(const Bf16* x_perm, Bf16* y_perm, const int32_t* expert_offsets, int64_t num_experts,
                             const ExpertWeightsBf16* experts, int64_t hidden, int64_t inter, int64_t row_capacity,
                             Bf16* scratch);

// ---- Sampling ---------------------------------------------------------------------

// Same token as cpu::sample for the same logits, params and uniform: the same
// float probabilities (exp rounded as glibc's), a stable sort (ties to the lower
// id), and the mass accumulated in double as the CPU does. Synchronises the
// current stream. scratch: 2 * vocab floats of device memory (a full-vocabulary
// radix sort for now; a top-k-first selection is the obvious speed-up).
Result<int32_t> sample(const float* logits, int64_t vocab, const SamplingParams& params, float uniform,
                       float* scratch);

// Lowest index of the maximum. Synchronises the current stream.
Result<int32_t> argmax(const float* x, int64_t n);
// Row-wise argmax of x [rows, n] into device out [rows], no synchronisation (greedy decode).
Status argmax_rows(const float* x, int64_t rows, int64_t n, int32_t* out);

// ---- Conversions --------------------------------------------------------------------

// Round to nearest even, as tandem::float_to_bf16.
Status convert(const float* src, Bf16* dst, int64_t n);
Status convert(const Bf16* src, float* dst, int64_t n);

}  // namespace tandem::kernels::cuda
