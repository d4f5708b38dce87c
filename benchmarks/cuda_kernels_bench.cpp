// CUDA kernel throughput against the same GPU's own limits, measured in the same
// run, so the ratios mean something on whichever card runs it:
//
//  * decode attention (attention_paged, BF16 paged KV): the bytes that must move
//    (K and V read once, Q read, output written) over the kernel time, as a
//    fraction of a device-to-device cudaMemcpy counted as bytes read + written.
//    Target: 0.70 or more at batch >= 64 and context >= 2048.
//  * grouped expert GEMM, BF16, two ways: "moe" rows run three cuBLAS GEMMs per
//    expert (grouped_swiglu_host_offsets), "moeB" rows two grouped-batched
//    cuBLAS calls for all experts (grouped_swiglu_batched). TFLOP/s as a
//    fraction of cuBLAS dense BF16 GEMMs of the same total shape (the gate and up
//    projections as one [rows, hidden] x [2*inter, hidden]^T product, the down
//    projection as [rows, inter] x [hidden, inter]^T). Target: 0.60 or more from
//    2048 tokens up, by either. "moeD" rows (decode sizes only: at most 16 rows
//    per expert on average) time our weight-streaming kernel with the routing
//    on the device (grouped_swiglu_device): GB/s of the touched experts'
//    weights as a fraction of the D2D copy, since at these sizes the weights,
//    not the FLOPs, set the time (no target in the issue; reported).
//
// Before timing anything it checks both kernels against the CPU reference
// (kernels/cpu) on small inputs, and every timed case checks that its output was
// fully written (poisoned with NaN first), so a fast wrong kernel cannot pass.
//
//   cuda_kernels_bench [--quick] [--reps N] [--only attn|moe] [--csv FILE] [--strict]
//
// Exit status: 0 when it ran and the numerical checks passed (targets are
// reported, not enforced, unless --strict: then a missed target exits 3);
// 0 with "skipped: no CUDA device (...)" when there is no usable GPU; 1 on a CUDA
// error or a failed numerical check.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "tandem/common/dtype.h"
#include "tandem/kernels/cpu.h"
#include "tandem/kernels/cuda.h"

namespace {

using namespace tandem;
namespace cu = tandem::kernels::cuda;
namespace cpu = tandem::kernels::cpu;
using cu::Bf16;

// ---- plumbing ------------------------------------------------------------------

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error(what); }

void check_cuda(cudaError_t err, const char* expr, int line) {
  if (err != cudaSuccess)
    fail(std::string(expr) + " failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ") [line " +
         std::to_string(line) + "]");
}
#define CK(expr) check_cuda((expr), #expr, __LINE__)

void check_cublas(cublasStatus_t st, const char* expr, int line) {
  if (st != CUBLAS_STATUS_SUCCESS)
    fail(std::string(expr) + " failed: " + cublasGetStatusName(st) + " [line " + std::to_string(line) + "]");
}
#define CKB(expr) check_cublas((expr), #expr, __LINE__)

void check_ok(const Status& st) {
  if (!st.is_ok()) fail(st.to_string());
}

cudaStream_t lib_stream() { return static_cast<cudaStream_t>(cu::current_stream()); }

template <typename T>
class DevBuf {
 public:
  DevBuf() = default;
  explicit DevBuf(size_t n) : n_(n) {
    if (n_) CK(cudaMalloc(reinterpret_cast<void**>(&p_), n_ * sizeof(T)));
  }
  ~DevBuf() {
    if (p_) cudaFree(p_);
  }
  DevBuf(DevBuf&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DevBuf& operator=(DevBuf&& o) noexcept {
    if (this != &o) {
      if (p_) cudaFree(p_);
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }
  void upload(const std::vector<T>& h) {
    if (h.size() != n_) fail("upload: size mismatch");
    CK(cudaMemcpy(p_, h.data(), bytes(), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> h(n_);
    CK(cudaStreamSynchronize(lib_stream()));
    CK(cudaMemcpy(h.data(), p_, bytes(), cudaMemcpyDeviceToHost));
    return h;
  }
  // All-ones bytes: NaN in BF16 and FP32, so an element the kernel never writes
  // shows up in the finiteness check.
  void poison() const { CK(cudaMemsetAsync(p_, 0xFF, bytes(), lib_stream())); }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// xorshift64: cheap enough for hundreds of MiB, and fresh values per seed.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 0x1234567ull) {}
  uint64_t next() {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    return s;
  }
  float uniform() { return static_cast<float>(next() >> 40) / static_cast<float>(1 << 24); }  // [0, 1)
  float sym(float scale) { return scale * (2.0f * uniform() - 1.0f); }
  uint32_t below(uint32_t n) { return static_cast<uint32_t>(next() % n); }
};

// Random values already rounded to BF16, so host reference and device see the same numbers.
std::vector<float> random_bf16_values(size_t n, uint64_t seed, float scale) {
  Rng r(seed);
  std::vector<float> v(n);
  for (float& x : v) x = bf16_to_float(float_to_bf16(r.sym(scale)));
  return v;
}
std::vector<Bf16> to_bf16(const std::vector<float>& v) {
  std::vector<Bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i].bits = float_to_bf16(v[i]);
  return out;
}
std::vector<float> from_bf16(const std::vector<Bf16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_to_float(v[i].bits);
  return out;
}

// Fills a large device buffer with random BF16 without generating all of it on
// the host: one random 16 MiB tile, then doubling device-to-device copies. The
// repetition does not matter for speed; zeros would (they can run faster).
void fill_random(Bf16* dst, size_t n, uint64_t seed, float scale) {
  const size_t tile = std::min<size_t>(n, size_t{8} << 20);
  Rng r(seed);
  std::vector<Bf16> h(tile);
  for (auto& x : h) x.bits = float_to_bf16(r.sym(scale));
  CK(cudaMemcpy(dst, h.data(), tile * sizeof(Bf16), cudaMemcpyHostToDevice));
  for (size_t filled = tile; filled < n;) {
    const size_t c = std::min(filled, n - filled);
    CK(cudaMemcpy(dst + filled, dst, c * sizeof(Bf16), cudaMemcpyDeviceToDevice));
    filled += c;
  }
}

// NaN or Inf: all exponent bits set. Read off the bits, since the timed cases'
// outputs reach hundreds of MiB.
size_t count_nonfinite(const std::vector<Bf16>& v) {
  size_t bad = 0;
  for (Bf16 x : v) bad += (x.bits & 0x7F80u) == 0x7F80u;
  return bad;
}

// ‖got − ref‖ / ‖ref‖ plus an elementwise bound, as the unit tests use.
struct Compare {
  double rel_l2 = 0;
  size_t bad = 0;
  size_t nonfinite = 0;
};
Compare compare(const std::vector<float>& got, const std::vector<float>& ref, double rtol, double atol) {
  Compare c;
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) {
      ++c.nonfinite;
      continue;
    }
    const double d = static_cast<double>(got[i]) - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
    if (std::fabs(d) > atol + rtol * std::fabs(ref[i])) ++c.bad;
  }
  c.rel_l2 = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return c;
}

// ---- timing ------------------------------------------------------------------------

struct Options {
  bool quick = false;
  bool strict = false;
  int reps = 20;
  std::string only;  // "", "attn" or "moe"
  std::string csv;
};

// Median over `reps` samples of one call's time in ms, from CUDA events on the
// library's stream. Warm-up first (module load, cuBLAS handles, the scratch
// pool). A sample holds enough back-to-back calls to last about 0.5 ms, so
// launch gaps and the event resolution do not dominate short kernels.
template <typename F>
double median_ms(F&& call, int reps) {
  cudaStream_t s = lib_stream();
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  int iter = 0;
  for (int i = 0; i < 3; ++i) call(iter++);
  CK(cudaStreamSynchronize(s));
  CK(cudaEventRecord(a, s));
  call(iter++);
  CK(cudaEventRecord(b, s));
  CK(cudaEventSynchronize(b));
  float one = 0;
  CK(cudaEventElapsedTime(&one, a, b));
  const int inner = std::clamp(static_cast<int>(std::ceil(0.5 / std::max(one, 1e-4f))), 1, 64);
  std::vector<double> samples;
  for (int r = 0; r < reps; ++r) {
    CK(cudaEventRecord(a, s));
    for (int i = 0; i < inner; ++i) call(iter++);
    CK(cudaEventRecord(b, s));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    samples.push_back(ms / inner);
  }
  CK(cudaGetLastError());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

// ---- results -----------------------------------------------------------------------

struct Row {
  std::string kind, model, shape;
  double ms = 0, rate = 0, baseline = 0, ratio = 0, target = 0;
  const char* unit = "";
  bool has_target = false, met = false, written = true;
  std::string note;
};

struct Report {
  std::vector<Row> rows;
  bool checks_ok = true;  // a target is credited only when the kernels computed the right thing
  int errors = 0;

  void print(const Row& r) const {
    char target[64];
    if (r.has_target)
      std::snprintf(target, sizeof target, "target >= %.2f %s", r.target,
                    r.met ? "ok" : (checks_ok ? "MISS" : "MISS (checks failed)"));
    else
      std::snprintf(target, sizeof target, "(no target)");
    std::printf("%-4s %-14s %-38s %9.3f ms %8.1f %-7s %.2f of %s %s%s%s\n", r.kind.c_str(), r.model.c_str(),
                r.shape.c_str(), r.ms, r.rate, r.unit, r.ratio, std::string(r.unit) == "GB/s" ? "D2D copy" : "cuBLAS dense",
                target, r.note.empty() ? "" : "  ", r.note.c_str());
    std::fflush(stdout);
  }
  void add(Row r) {
    print(r);
    rows.push_back(std::move(r));
  }
  void write_csv(const std::string& path) const {
    FILE* f = std::fopen(path.c_str(), "w");
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", path.c_str());
      return;
    }
    std::fprintf(f, "kind,model,shape,ms,rate,unit,baseline,ratio,target,met,written,note\n");
    for (const Row& r : rows)
      std::fprintf(f, "%s,%s,\"%s\",%.6f,%.4f,%s,%.4f,%.4f,%s,%s,%d,\"%s\"\n", r.kind.c_str(), r.model.c_str(),
                   r.shape.c_str(), r.ms, r.rate, r.unit, r.baseline, r.ratio,
                   r.has_target ? std::to_string(r.target).c_str() : "", r.has_target ? (r.met ? "yes" : "no") : "",
                   r.written ? 1 : 0, r.note.c_str());
    std::fclose(f);
  }
};

// ---- baselines ---------------------------------------------------------------------

// Device-to-device copy bandwidth, bytes read + written, over 1 GiB buffers
// (far beyond the L2), same timer as the kernels.
double d2d_copy_gbps(int reps) {
  const size_t bytes = size_t{1} << 30;
  DevBuf<char> a(bytes), b(bytes);
  CK(cudaMemset(a.get(), 1, bytes));
  CK(cudaMemset(b.get(), 2, bytes));
  const double ms = median_ms(
      [&](int) { CK(cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice, lib_stream())); }, reps);
  return 2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e9;
}

// Row-major y[n, out] = x[n, in] · w[out, in]ᵀ with x's rows `ldx` apart: the
// library's cublasGemmEx call (BF16 in and out, FP32 accumulate) on our handle.
void dense_gemm(cublasHandle_t h, const Bf16* x, int64_t ldx, const Bf16* w, Bf16* y, int64_t n, int64_t in,
                int64_t out) {
  const float alpha = 1.0f, beta = 0.0f;
  CKB(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(n), static_cast<int>(in),
                   &alpha, w, CUDA_R_16BF, static_cast<int>(in), x, CUDA_R_16BF, static_cast<int>(ldx), &beta, y,
                   CUDA_R_16BF, static_cast<int>(out), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// ---- models ------------------------------------------------------------------------

struct AttnShape {
  const char* name;
  int hq, hkv, d;
};
// Decode attention of the two target models (one layer).
constexpr AttnShape kAttnShapes[] = {{"mixtral-8x7b", 32, 8, 128}, {"qwen3-30b-a3b", 32, 4, 128}};
constexpr int kBlockSize = 16;

struct MoeShape {
  const char* name;
  int hidden, inter, experts, top_k;
};
constexpr MoeShape kMoeShapes[] = {{"mixtral-8x7b", 4096, 14336, 8, 2}, {"qwen3-30b-a3b", 2048, 768, 128, 8}};

// ---- numerical checks against the CPU reference ----------------------------------

// A paged cache whose sequences own shuffled blocks; contexts of different lengths.
bool check_attention(const AttnShape& m, const std::vector<int>& ctx, uint64_t seed, const char* what) {
  const int batch = static_cast<int>(ctx.size());
  int max_blocks = 1, used = 0;
  for (int c : ctx) {
    max_blocks = std::max(max_blocks, (c + kBlockSize - 1) / kBlockSize);
    used += (c + kBlockSize - 1) / kBlockSize;
  }
  const int num_blocks = used + 5;
  std::vector<int32_t> pool(num_blocks);
  std::iota(pool.begin(), pool.end(), 0);
  Rng r(seed);
  for (int i = num_blocks - 1; i > 0; --i) std::swap(pool[i], pool[r.below(i + 1)]);
  std::vector<int32_t> tables(size_t(batch) * max_blocks, 0), seq(batch), len(ctx.begin(), ctx.end());
  int next = 0;
  for (int b = 0; b < batch; ++b) {
    seq[b] = b;
    for (int j = 0; j < (ctx[b] + kBlockSize - 1) / kBlockSize; ++j) tables[size_t(b) * max_blocks + j] = pool[next++];
  }
  const size_t cache_n = size_t(num_blocks) * kBlockSize * m.hkv * m.d;
  auto k = random_bf16_values(cache_n, seed + 1, 2.0f);
  auto v = random_bf16_values(cache_n, seed + 2, 1.0f);
  auto q = random_bf16_values(size_t(batch) * m.hq * m.d, seed + 3, 2.0f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(m.d));
  std::vector<float> ref(q.size());
  kernels::PagedKv hc{k.data(), v.data(), num_blocks, kBlockSize, m.hkv, m.d};
  cpu::attention_paged(q.data(), ref.data(), batch, m.hq, hc, tables.data(), max_blocks, seq.data(), len.data(),
                       scale);

  DevBuf<Bf16> dk(cache_n), dv(cache_n), dq(q.size()), dout(q.size());
  DevBuf<int32_t> dt(tables.size()), ds(seq.size()), dl(len.size());
  dk.upload(to_bf16(k));
  dv.upload(to_bf16(v));
  dq.upload(to_bf16(q));
  dt.upload(tables);
  ds.upload(seq);
  dl.upload(len);
  dout.poison();
  cu::PagedKvBf16 dc{dk.get(), dv.get(), num_blocks, kBlockSize, m.hkv, m.d};
  check_ok(cu::attention_paged(dq.get(), dout.get(), batch, m.hq, dc, dt.get(), max_blocks, ds.get(), dl.get(), scale));
  const Compare c = compare(from_bf16(dout.download()), ref, 1.6e-2, 4e-3);
  const bool ok = c.bad == 0 && c.nonfinite == 0 && c.rel_l2 < 1e-2;
  std::printf("check attention_paged bf16 %-14s %-38s rel err %.2e, %zu off, %zu not finite: %s\n", m.name, what,
              c.rel_l2, c.bad, c.nonfinite, ok ? "ok" : "FAILED");
  return ok;
}

bool check_grouped(const char* name, int hidden, int inter, int experts, int top_k, int tokens, bool empty_expert,
                   uint64_t seed) {
  // Routing: distinct experts per token; optionally expert 1 gets nothing, to
  // cover the skipped-expert path.
  Rng r(seed);
  std::vector<int> counts(experts, 0);
  for (int t = 0; t < tokens; ++t) {
    std::vector<int> chosen;
    while (static_cast<int>(chosen.size()) < top_k) {
      const int e = static_cast<int>(r.below(experts));
      if ((empty_expert && e == 1) || std::find(chosen.begin(), chosen.end(), e) != chosen.end()) continue;
      chosen.push_back(e);
    }
    for (int e : chosen) ++counts[e];
  }
  std::vector<int32_t> offsets(experts + 1, 0);
  for (int e = 0; e < experts; ++e) offsets[e + 1] = offsets[e] + counts[e];
  const int rows = offsets[experts];
  const int max_rows = *std::max_element(counts.begin(), counts.end());
  const size_t per = size_t(hidden) * inter;
  auto w = random_bf16_values(size_t(experts) * 3 * per, seed + 1, 1.0f / std::sqrt(static_cast<float>(hidden)));
  auto x = random_bf16_values(size_t(rows) * hidden, seed + 2, 1.0f);
  std::vector<kernels::ExpertWeights> hw(experts);
  for (int e = 0; e < experts; ++e) {
    const float* base = w.data() + size_t(e) * 3 * per;
    hw[e] = {base, base + per, base + 2 * per};
  }
  std::vector<float> ref(x.size()), scratch(size_t(3) * max_rows * inter);
  cpu::grouped_swiglu(x.data(), ref.data(), offsets.data(), experts, hw.data(), hidden, inter, scratch.data());

  DevBuf<Bf16> dw(w.size()), dx(x.size()), dy(x.size()), dscratch(size_t(3) * max_rows * inter);
  dw.upload(to_bf16(w));
  dx.upload(to_bf16(x));
  dy.poison();
  std::vector<cu::ExpertWeightsBf16> ew(experts);
  for (int e = 0; e < experts; ++e) {
    const Bf16* base = dw.get() + size_t(e) * 3 * per;
    ew[e] = {base, base + per, base + 2 * per};
  }
  // The GPU rounds gate, up and the activation to BF16 where the CPU keeps FP32;
  // the absolute slack scales with the output, whose size depends on the shape.
  double sq = 0;
  for (float v : ref) sq += double(v) * v;
  const double ref_rms = ref.empty() ? 0.0 : std::sqrt(sq / ref.size());
  char what[96];
  std::snprintf(what, sizeof what, "hidden %d inter %d, %d experts top-%d, %d tokens", hidden, inter, experts, top_k,
                tokens);
  // The device-offset kernel takes its routing and expert table from the device.
  DevBuf<int32_t> doffsets(offsets.size());
  doffsets.upload(offsets);
  DevBuf<cu::ExpertWeightsBf16> dtable(ew.size());
  dtable.upload(ew);
  DevBuf<Bf16> drow_scratch(std::max<size_t>(1, size_t(rows) * inter));
  bool all_ok = true;
  for (const char* variant : {"_host_offsets", "_batched", "_device"}) {
    dy.poison();
    const std::string v = variant;
    if (v == "_batched")
      check_ok(cu::grouped_swiglu_batched(dx.get(), dy.get(), offsets.data(), experts, ew.data(), hidden, inter));
    else if (v == "_device")
      check_ok(cu::grouped_swiglu_device(dx.get(), dy.get(), doffsets.get(), experts, dtable.get(), hidden, inter,
                                         rows, drow_scratch.get()));
    else
      check_ok(cu::grouped_swiglu_host_offsets(dx.get(), dy.get(), offsets.data(), experts, ew.data(), hidden, inter,
                                               dscratch.get()));
    const Compare c = compare(from_bf16(dy.download()), ref, 3e-2, 3e-2 * ref_rms);
    const bool ok = c.bad == 0 && c.nonfinite == 0 && c.rel_l2 < 1e-2;
    std::printf("check grouped_swiglu%s bf16 %-14s %-38s rel err %.2e, %zu off, %zu not finite: %s\n", variant, name,
                what, c.rel_l2, c.bad, c.nonfinite, ok ? "ok" : "FAILED");
    all_ok &= ok;
  }
  return all_ok;
}

// ---- decode attention ----------------------------------------------------------------

void bench_attention(const Options& o, double copy_gbps, Report& rep) {
  std::vector<std::pair<int, int>> cases;  // (batch, context)
  if (o.quick)
    cases = {{1, 4096}, {16, 2048}, {64, 512}, {64, 2048}, {64, 8192}, {128, 4096}};
  else
    cases = {{1, 2048}, {1, 16384}, {16, 2048}, {64, 512}, {64, 2048}, {64, 4096}, {64, 8192}, {64, 16384}, {128, 8192}};

  for (const AttnShape& m : kAttnShapes) {
    // One cache per model: large enough for the biggest case, and at least
    // 2 GiB of K+V so small cases rotate over block sets that do not share
    // the L2 (50-60 MB on Hopper; otherwise they would time the cache, not HBM).
    const size_t block_elems = size_t(kBlockSize) * m.hkv * m.d;
    size_t need_blocks = 0;
    for (auto [b, c] : cases) need_blocks = std::max(need_blocks, size_t(b) * ((c + kBlockSize - 1) / kBlockSize));
    const size_t min_blocks = (size_t{2} << 30) / (2 * block_elems * sizeof(Bf16));
    const size_t num_blocks = std::max(need_blocks, min_blocks);
    check_ok(cu::check_free_memory(2 * num_blocks * block_elems * sizeof(Bf16) + (size_t{256} << 20), "KV cache"));
    DevBuf<Bf16> kc(num_blocks * block_elems), vc(num_blocks * block_elems);
    fill_random(kc.get(), kc.size(), 11, 2.0f);
    fill_random(vc.get(), vc.size(), 12, 1.0f);
    cu::PagedKvBf16 cache{kc.get(), vc.get(), static_cast<int64_t>(num_blocks), kBlockSize, m.hkv, m.d};
    std::vector<int32_t> perm(num_blocks);
    std::iota(perm.begin(), perm.end(), 0);
    Rng r(99);
    for (size_t i = num_blocks - 1; i > 0; --i) std::swap(perm[i], perm[r.below(static_cast<uint32_t>(i + 1))]);

    for (auto [batch, ctx] : cases) {
      const int bps = (ctx + kBlockSize - 1) / kBlockSize;
      const size_t per_set = size_t(batch) * bps;
      // Enough sets that one pass over them is several times the L2 for the small
      // cases; the big ones (one set) are far beyond it anyway.
      const int sets = static_cast<int>(std::clamp<size_t>(num_blocks / per_set, 1, 64));
      std::vector<int32_t> tables(per_set * sets);
      std::copy(perm.begin(), perm.begin() + tables.size(), tables.begin());
      std::vector<int32_t> seq(batch), len(batch, ctx);
      std::iota(seq.begin(), seq.end(), 0);
      const size_t qn = size_t(batch) * m.hq * m.d;
      DevBuf<int32_t> dt(tables.size()), ds(batch), dl(batch);
      dt.upload(tables);
      ds.upload(seq);
      dl.upload(len);
      DevBuf<Bf16> dq(qn * sets), dout(qn);
      fill_random(dq.get(), dq.size(), 13 + batch, 2.0f);
      const float scale = 1.0f / std::sqrt(static_cast<float>(m.d));
      auto call = [&](int i) {
        const int s = i % sets;
        check_ok(cu::attention_paged(dq.get() + s * qn, dout.get(), batch, m.hq, cache, dt.get() + s * per_set, bps,
                                     ds.get(), dl.get(), scale));
      };
      Row row;
      row.kind = "attn";
      row.model = m.name;
      char shape[96];
      std::snprintf(shape, sizeof shape, "batch %d ctx %d (%dq/%dkv x %d)", batch, ctx, m.hq, m.hkv, m.d);
      row.shape = shape;
      try {
        dout.poison();
        call(0);
        const size_t unwritten = count_nonfinite(dout.download());
        row.written = unwritten == 0;
        if (!row.written) row.note = std::to_string(unwritten) + " outputs not written or not finite";
        row.ms = median_ms(call, o.reps);
      } catch (const std::exception& e) {
        ++rep.errors;
        std::printf("attn %-14s %-38s ERROR %s\n", m.name, shape, e.what());
        continue;
      }
      const double bytes = 2.0 * batch * double(ctx) * m.hkv * m.d * sizeof(Bf16) + 2.0 * qn * sizeof(Bf16);
      row.rate = bytes / (row.ms * 1e-3) / 1e9;
      row.unit = "GB/s";
      row.baseline = copy_gbps;
      row.ratio = row.rate / copy_gbps;
      row.has_target = batch >= 64 && ctx >= 2048;
      row.target = 0.70;
      row.met = rep.checks_ok && row.written && row.ratio >= row.target;
      if (sets > 1 && row.note.empty()) row.note = "rotating " + std::to_string(sets) + " block sets";
      rep.add(std::move(row));
    }
  }
}

// ---- grouped expert GEMM ----------------------------------------------------------------

void bench_grouped(const Options& o, double copy_gbps, Report& rep) {
  std::vector<int> token_counts = o.quick ? std::vector<int>{16, 256, 2048, 8192}
                                          : std::vector<int>{16, 64, 256, 1024, 2048, 4096, 8192};
  cublasHandle_t handle;
  CKB(cublasCreate(&handle));
  CKB(cublasSetStream(handle, lib_stream()));

  for (const MoeShape& m : kMoeShapes) {
    const size_t per = size_t(m.hidden) * m.inter;
    const int max_tokens = *std::max_element(token_counts.begin(), token_counts.end());
    const size_t max_rows = size_t(max_tokens) * m.top_k;
    check_ok(cu::check_free_memory(sizeof(Bf16) * (size_t(m.experts) * 3 * per + 3 * per + max_rows * m.hidden * 2 +
                                                    max_rows * 2 * m.inter + 3 * max_rows * m.inter),
                                   "expert weights and activations"));
    DevBuf<Bf16> w(size_t(m.experts) * 3 * per);
    fill_random(w.get(), w.size(), 21, 1.0f / std::sqrt(static_cast<float>(m.hidden)));
    std::vector<cu::ExpertWeightsBf16> ew(m.experts);
    for (int e = 0; e < m.experts; ++e) {
      const Bf16* base = w.get() + size_t(e) * 3 * per;
      ew[e] = {base, base + per, base + 2 * per};
    }
    DevBuf<cu::ExpertWeightsBf16> table(ew.size());
    table.upload(ew);
    // Baseline weights: gate and up stacked as one [2*inter, hidden] matrix, down [hidden, inter].
    DevBuf<Bf16> w13(2 * per), w2(per);
    fill_random(w13.get(), w13.size(), 22, 1.0f / std::sqrt(static_cast<float>(m.hidden)));
    fill_random(w2.get(), w2.size(), 23, 1.0f / std::sqrt(static_cast<float>(m.inter)));
    DevBuf<Bf16> x(max_rows * m.hidden), y(max_rows * m.hidden), h(max_rows * 2 * m.inter);
    fill_random(x.get(), x.size(), 24, 1.0f);

    for (int tokens : token_counts) {
      // Router-like routing: each token picks top_k distinct experts uniformly at
      // random (seeded), so experts get uneven row counts as in serving.
      Rng r(1000 + tokens);
      std::vector<int> counts(m.experts, 0);
      for (int t = 0; t < tokens; ++t) {
        int chosen[32];
        int nc = 0;
        while (nc < m.top_k) {
          const int e = static_cast<int>(r.below(m.experts));
          if (std::find(chosen, chosen + nc, e) == chosen + nc) chosen[nc++] = e;
        }
        for (int i = 0; i < nc; ++i) ++counts[chosen[i]];
      }
      std::vector<int32_t> offsets(m.experts + 1, 0);
      for (int e = 0; e < m.experts; ++e) offsets[e + 1] = offsets[e] + counts[e];
      const int rows = offsets[m.experts];
      const int max_per_expert = *std::max_element(counts.begin(), counts.end());
      const int touched = static_cast<int>(std::count_if(counts.begin(), counts.end(), [](int c) { return c > 0; }));
      DevBuf<Bf16> scratch(size_t(3) * max_per_expert * m.inter);

      Row row;
      row.kind = "moe";
      row.model = m.name;
      char shape[96];
      std::snprintf(shape, sizeof shape, "tokens %d (rows %d, max %d/expert)", tokens, rows, max_per_expert);
      row.shape = shape;
      double dense_ms = 0, batched_ms = 0, device_ms = 0;
      // Decode sizes only: the kernel streams each expert's weights once per 8
      // rows (the runner switches to it at 8 on average; up to 16 shows the crossover).
      const bool time_device = rows <= 16 * m.experts;
      DevBuf<int32_t> doffsets(offsets.size());
      doffsets.upload(offsets);
      DevBuf<Bf16> row_scratch(time_device ? size_t(rows) * m.inter : 0);
      bool device_written = true;
      try {
        y.poison();
        check_ok(cu::grouped_swiglu_host_offsets(x.get(), y.get(), offsets.data(), m.experts, ew.data(), m.hidden,
                                                 m.inter, scratch.get()));
        std::vector<Bf16> out(size_t(rows) * m.hidden);
        CK(cudaStreamSynchronize(lib_stream()));
        CK(cudaMemcpy(out.data(), y.get(), out.size() * sizeof(Bf16), cudaMemcpyDeviceToHost));
        const size_t unwritten = count_nonfinite(out);
        row.written = unwritten == 0;
        if (!row.written) row.note = std::to_string(unwritten) + " outputs not written or not finite";
        row.ms = median_ms(
            [&](int) {
              check_ok(cu::grouped_swiglu_host_offsets(x.get(), y.get(), offsets.data(), m.experts, ew.data(),
                                                       m.hidden, m.inter, scratch.get()));
            },
            o.reps);
        dense_ms = median_ms(
            [&](int) {
              dense_gemm(handle, x.get(), m.hidden, w13.get(), h.get(), rows, m.hidden, 2 * m.inter);
              dense_gemm(handle, h.get(), 2 * m.inter, w2.get(), y.get(), rows, m.inter, m.hidden);
            },
            o.reps);
        batched_ms = median_ms(
            [&](int) {
              check_ok(cu::grouped_swiglu_batched(x.get(), y.get(), offsets.data(), m.experts, ew.data(), m.hidden,
                                                  m.inter));
            },
            o.reps);
        if (time_device) {
          auto device_call = [&](int) {
            check_ok(cu::grouped_swiglu_device(x.get(), y.get(), doffsets.get(), m.experts, table.get(), m.hidden,
                                               m.inter, rows, row_scratch.get()));
          };
          y.poison();
          device_call(0);
          std::vector<Bf16> out(size_t(rows) * m.hidden);
          CK(cudaStreamSynchronize(lib_stream()));
          CK(cudaMemcpy(out.data(), y.get(), out.size() * sizeof(Bf16), cudaMemcpyDeviceToHost));
          device_written = count_nonfinite(out) == 0;
          if (!device_written) ++rep.errors;  // a kernel that skips outputs is broken, not slow
          device_ms = median_ms(device_call, o.reps);
        }
      } catch (const std::exception& e) {
        ++rep.errors;
        std::printf("moe  %-14s %-38s ERROR %s\n", m.name, shape, e.what());
        continue;
      }
      const double flops = 2.0 * rows * double(m.hidden) * m.inter * 3;
      row.rate = flops / (row.ms * 1e-3) / 1e12;
      row.unit = "TFLOP/s";
      row.baseline = flops / (dense_ms * 1e-3) / 1e12;
      row.ratio = row.rate / row.baseline;
      row.has_target = tokens >= 2048;
      row.target = 0.60;
      row.met = rep.checks_ok && row.written && row.ratio >= row.target;
      // At few tokens the experts' weights, not the FLOPs, set the time: say how
      // close that traffic is to the copy bandwidth.
      const double wbytes = double(touched) * 3 * per * sizeof(Bf16);
      char note[96];
      std::snprintf(note, sizeof note, "dense %.1f TFLOP/s; %d experts' weights at %.2f of copy", row.baseline,
                    touched, wbytes / (row.ms * 1e-3) / 1e9 / copy_gbps);
      row.note = row.note.empty() ? note : row.note + "; " + note;
      // The same FFN as two grouped-batched cuBLAS calls (grouped_swiglu_batched).
      Row b = row;
      b.kind = "moeB";
      b.ms = batched_ms;
      b.rate = flops / (batched_ms * 1e-3) / 1e12;
      b.ratio = b.rate / b.baseline;
      b.met = rep.checks_ok && b.written && b.ratio >= b.target;
      std::snprintf(note, sizeof note, "batched; %.2fx the per-expert GEMMs", row.ms / batched_ms);
      b.note = note;
      Row d = b;
      if (time_device) {
        // The weight-streaming kernel, against the copy bandwidth.
        d.kind = "moeD";
        d.ms = device_ms;
        d.written = device_written;
        d.rate = wbytes / (device_ms * 1e-3) / 1e9;
        d.unit = "GB/s";
        d.baseline = copy_gbps;
        d.ratio = d.rate / copy_gbps;
        d.has_target = false;
        d.met = false;
        std::snprintf(note, sizeof note, "device offsets; %.2fx the per-expert GEMMs, %.2fx batched%s",
                      row.ms / device_ms, batched_ms / device_ms, device_written ? "" : "; OUTPUT NOT WRITTEN");
        d.note = note;
      }
      rep.add(std::move(row));
      rep.add(std::move(b));
      if (time_device) rep.add(std::move(d));
    }
  }
  cublasDestroy(handle);
}

int run(const Options& o) {
  Result<int> n = cu::device_count();
  if (!n.is_ok() || *n == 0) {
    std::string why = n.is_ok() ? "0 devices visible" : n.status().message();
    const std::string prefix = "no CUDA device: ";  // device_count's own wording
    if (why.rfind(prefix, 0) == 0) why.erase(0, prefix.size());
    std::printf("skipped: no CUDA device (%s)\n", why.c_str());
    return 0;
  }
  Result<cu::DeviceInfo> info = cu::device_info();
  check_ok(info.status());
  std::printf("device: %s, sm_%d%d, %d SMs, %s total, driver %d, runtime %d\n", info->name.c_str(), info->cc_major,
              info->cc_minor, info->multiprocessors, cu::format_bytes(info->memory.total_bytes).c_str(),
              info->driver_version, info->runtime_version);

  Report rep;
  bool checks_ok = true;
  if (o.only.empty() || o.only == "attn") {
    for (const AttnShape& m : kAttnShapes) {
      // Few (token, head) blocks: the split-context path and its combine kernel.
      checks_ok &= check_attention(m, {3001, 1777}, 5, "batch 2, ctx 3001/1777 (split)");
      // Many blocks, uneven lengths, an empty context: the single-pass path.
      std::vector<int> lens(72);
      for (size_t i = 0; i < lens.size(); ++i) lens[i] = static_cast<int>((i * 37) % 300);
      checks_ok &= check_attention(m, lens, 6, "batch 72, ctx 0..299");
    }
  }
  if (o.only.empty() || o.only == "moe") {
    checks_ok &= check_grouped("qwen3-30b-a3b", 2048, 768, 16, 8, 40, true, 7);
    checks_ok &= check_grouped("odd", 320, 200, 5, 2, 33, true, 8);
  }
  rep.checks_ok = checks_ok;

  const double copy = d2d_copy_gbps(o.reps);
  std::printf("baseline: device-to-device cudaMemcpy %.1f GB/s (1 GiB, bytes read + written, median of %d)\n", copy,
              o.reps);
  std::printf("%-4s %-14s %-38s %12s %16s\n", "op", "model", "shape", "time", "rate");
  if (o.only.empty() || o.only == "attn") bench_attention(o, copy, rep);
  if (o.only.empty() || o.only == "moe") bench_grouped(o, copy, rep);
  // The copy baseline again: if the card's clocks moved during the run, the
  // ratios above lean on a stale number; this says by how much.
  const double copy2 = d2d_copy_gbps(o.reps);
  std::printf("baseline again at the end: %.1f GB/s (%.1f%% from the first)\n", copy2, 100.0 * (copy2 / copy - 1.0));

  // The grouped-GEMM target counts per shape when either implementation meets it.
  int attn_met = 0, attn_n = 0, moe_met = 0, moe_n = 0, batched_met = 0;
  for (const Row& r : rep.rows) {
    if (!r.has_target) continue;
    if (r.kind == "attn") {
      ++attn_n;
      attn_met += r.met ? 1 : 0;
    } else if (r.kind == "moe") {
      ++moe_n;
      moe_met += r.met ? 1 : 0;
    } else {
      batched_met += r.met ? 1 : 0;
    }
  }
  int either_met = 0;
  for (size_t i = 0; i + 1 < rep.rows.size(); ++i)
    if (rep.rows[i].kind == "moe" && rep.rows[i].has_target && rep.rows[i + 1].kind == "moeB")
      either_met += (rep.rows[i].met || rep.rows[i + 1].met) ? 1 : 0;
  if (!o.csv.empty()) rep.write_csv(o.csv);
  std::printf("cuda_kernels_bench: targets met %d/%d (decode attention %d/%d, grouped GEMM %d/%d: per-expert %d, "
              "batched %d); numerical checks %s; %d errors\n",
              attn_met + either_met, attn_n + moe_n, attn_met, attn_n, either_met, moe_n, moe_met, batched_met,
              checks_ok ? "ok" : "FAILED", rep.errors);
  if (!checks_ok || rep.errors) return 1;
  if (o.strict && attn_met + either_met < attn_n + moe_n) return 3;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--quick") {
      o.quick = true;
    } else if (a == "--strict") {
      o.strict = true;
    } else if (a == "--reps") {
      o.reps = std::max(1, std::atoi(value().c_str()));
    } else if (a == "--only") {
      o.only = value();
      if (o.only != "attn" && o.only != "moe") {
        std::fprintf(stderr, "--only takes attn or moe\n");
        return 2;
      }
    } else if (a == "--csv") {
      o.csv = value();
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: %s [--quick] [--reps N] [--only attn|moe] [--csv FILE] [--strict]\n", argv[0]);
      return 0;
    } else {
      std::fprintf(stderr, "unknown argument %s (try --help)\n", a.c_str());
      return 2;
    }
  }
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::printf("error: %s\n", e.what());
    return 1;
  }
}
