// Per-thread stream and cuBLAS handle, device queries, the scratch pool and the
// error formatting behind TANDEM_CUDA_CHECK. Host-only C++.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <thread>
#include <string>
#include <vector>

#include "check.h"
#include "tandem/common/logging.h"
#include "tandem/kernels/cuda.h"

namespace tandem::kernels::cuda {
namespace detail {
namespace {

// cudaStreamPerThread rather than the legacy stream 0: threads that never call
// set_stream still do not serialise against each other.
thread_local cudaStream_t t_stream = cudaStreamPerThread;

const char* base_name(const char* path) {
  const char* slash = std::strrchr(path, '/');
  return slash ? slash + 1 : path;
}

std::string cuda_error_text(const char* op, const char* expr, cudaError_t err, const char* file, int line) {
  return std::string(op) + ": " + expr + " failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
         ") [" + base_name(file) + ":" + std::to_string(line) + "]";
}

// Handles per device, destroyed when the thread exits.
struct CublasHandles {
  std::vector<cublasHandle_t> handles;
  ~CublasHandles() {
    for (cublasHandle_t h : handles) {
      // The context may already be gone at process exit; nothing useful to do then.
      if (h) (void)cublasDestroy(h);
    }
  }
};
thread_local CublasHandles t_cublas;

struct PinnedBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  ~PinnedBuffer() {
    if (ptr) (void)cudaFreeHost(ptr);
  }
};
thread_local PinnedBuffer t_pinned;

std::mutex g_mu;
std::vector<cudaMemPool_t> g_pools;  // per device; never destroyed (process lifetime)
std::vector<int> g_sm_counts;        // per device; 0 = not queried yet

Result<int> current_device(const char* op) {
  int dev = 0;
  TANDEM_CUDA_CHECK(op, cudaGetDevice(&dev));
  return dev;
}

Result<cudaMemPool_t> scratch_pool(const char* op) {
  TANDEM_ASSIGN_OR_RETURN(int dev, current_device(op));
  std::lock_guard<std::mutex> lock(g_mu);
  if (static_cast<size_t>(dev) >= g_pools.size()) g_pools.resize(dev + 1, nullptr);
  if (!g_pools[dev]) {
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = dev;
    cudaMemPool_t pool = nullptr;
    TANDEM_CUDA_CHECK(op, cudaMemPoolCreate(&pool, &props));
    // Keep freed blocks: the same scratch sizes come back every step.
    uint64_t threshold = std::numeric_limits<uint64_t>::max();
    TANDEM_CUDA_CHECK(op, cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
    g_pools[dev] = pool;
  }
  return g_pools[dev];
}

}  // namespace

Status cuda_error(const char* op, const char* expr, cudaError_t err, const char* file, int line) {
  return internal_error(cuda_error_text(op, expr, err, file, line));
}

Status cublas_error(const char* op, const char* expr, cublasStatus_t st, const char* file, int line) {
  return internal_error(std::string(op) + ": " + expr + " failed: " + cublasGetStatusName(st) + " (" +
                        cublasGetStatusString(st) + ") [" + base_name(file) + ":" + std::to_string(line) + "]");
}

void cuda_fatal(const char* op, const char* expr, cudaError_t err, const char* file, int line) {
  std::string text = cuda_error_text(op, expr, err, file, line);
  TANDEM_LOG_ERROR("{}", text);
  std::fprintf(stderr, "fatal CUDA error: %s\n", text.c_str());
  std::abort();
}

cudaStream_t stream() { return t_stream; }

Result<cublasHandle_t> cublas_handle(const char* op) {
  TANDEM_ASSIGN_OR_RETURN(int dev, current_device(op));
  if (static_cast<size_t>(dev) >= t_cublas.handles.size()) t_cublas.handles.resize(dev + 1, nullptr);
  cublasHandle_t& h = t_cublas.handles[dev];
  if (!h) {
    TANDEM_CUBLAS_CHECK(op, cublasCreate(&h));
    // FP32 GEMMs stay FP32 (no TF32), so they match the CPU reference.
    TANDEM_CUBLAS_CHECK(op, cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
  }
  TANDEM_CUBLAS_CHECK(op, cublasSetStream(h, t_stream));
  return h;
}

Result<int> sm_count(const char* op) {
  TANDEM_ASSIGN_OR_RETURN(int dev, current_device(op));
  std::lock_guard<std::mutex> lock(g_mu);
  if (static_cast<size_t>(dev) >= g_sm_counts.size()) g_sm_counts.resize(dev + 1, 0);
  if (g_sm_counts[dev] == 0) {
    TANDEM_CUDA_CHECK(op, cudaDeviceGetAttribute(&g_sm_counts[dev], cudaDevAttrMultiProcessorCount, dev));
  }
  return g_sm_counts[dev];
}

Scratch::~Scratch() {
  if (!ptr_) return;
  cudaError_t err = cudaFreeAsync(ptr_, stream_);
  if (err != cudaSuccess) TANDEM_LOG_WARN("scratch free failed: {}", cudaGetErrorString(err));
}

Status Scratch::allocate(size_t bytes, const char* op) {
  if (ptr_) return internal_error(std::string(op) + ": scratch allocated twice");
  if (bytes == 0) return Status::ok();
  TANDEM_ASSIGN_OR_RETURN(cudaMemPool_t pool, scratch_pool(op));
  cudaError_t err = cudaMallocFromPoolAsync(&ptr_, bytes, pool, t_stream);
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    ptr_ = nullptr;
    Status st = check_free_memory(bytes, std::string(op) + " scratch");
    if (!st.is_ok()) return st;
  }
  TANDEM_CUDA_CHECK(op, err);
  stream_ = t_stream;
  return Status::ok();
}

Result<void*> pinned_host_buffer(size_t bytes, const char* op) {
  if (t_pinned.bytes < bytes) {
    if (t_pinned.ptr) {
      // The buffer may be the target of a copy still queued on some stream.
      TANDEM_CUDA_CHECK(op, cudaStreamSynchronize(t_stream));
      TANDEM_CUDA_CHECK(op, cudaFreeHost(t_pinned.ptr));
      t_pinned.ptr = nullptr;
      t_pinned.bytes = 0;
    }
    size_t want = bytes < 4096 ? 4096 : bytes;
    TANDEM_CUDA_CHECK(op, cudaMallocHost(&t_pinned.ptr, want));
    t_pinned.bytes = want;
  }
  return t_pinned.ptr;
}

Result<const void*> read_back(const void* src, size_t bytes, const char* op) {
  TANDEM_ASSIGN_OR_RETURN(void* host, pinned_host_buffer(bytes, op));
  if (bytes == 0) return static_cast<const void*>(host);
  TANDEM_CUDA_CHECK(op, cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, t_stream));
  TANDEM_CUDA_CHECK(op, cudaStreamSynchronize(t_stream));
  return static_cast<const void*>(host);
}

}  // namespace detail

void set_stream(void* cuda_stream) {
  detail::t_stream = cuda_stream ? static_cast<cudaStream_t>(cuda_stream) : cudaStreamPerThread;
}

void* current_stream() { return detail::t_stream; }

Result<int> device_count() {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return unavailable(std::string("no CUDA device: ") + cudaGetErrorString(err));
  }
  if (n == 0) return unavailable("no CUDA device: cudaGetDeviceCount returned 0");
  return n;
}

Result<MemoryInfo> memory_info() {
  MemoryInfo m;
  TANDEM_CUDA_CHECK("memory_info", cudaMemGetInfo(&m.free_bytes, &m.total_bytes));
  return m;
}

Result<DeviceInfo> device_info() {
  const char* op = "device_info";
  DeviceInfo info;
  TANDEM_CUDA_CHECK(op, cudaGetDevice(&info.device));
  cudaDeviceProp prop{};
  TANDEM_CUDA_CHECK(op, cudaGetDeviceProperties(&prop, info.device));
  info.name = prop.name;
  info.cc_major = prop.major;
  info.cc_minor = prop.minor;
  info.multiprocessors = prop.multiProcessorCount;
  TANDEM_CUDA_CHECK(op, cudaDriverGetVersion(&info.driver_version));
  TANDEM_CUDA_CHECK(op, cudaRuntimeGetVersion(&info.runtime_version));
  TANDEM_ASSIGN_OR_RETURN(info.memory, memory_info());
  return info;
}

std::string format_bytes(size_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  if (u == 0) {
    std::snprintf(buf, sizeof buf, "%zu B", bytes);
  } else {
    std::snprintf(buf, sizeof buf, "%.2f %s", v, kUnits[u]);
  }
  return buf;
}

Status check_free_memory(size_t bytes, std::string_view what) {
  TANDEM_ASSIGN_OR_RETURN(MemoryInfo m, memory_info());
  if (bytes <= m.free_bytes) return Status::ok();
  return resource_exhausted(std::string(what) + ": asked " + std::to_string(bytes) + " bytes (" +
                            format_bytes(bytes) + "), " + format_bytes(m.free_bytes) + " free of " +
                            format_bytes(m.total_bytes));
}

Status synchronize() {
  TANDEM_CUDA_CHECK("synchronize", cudaStreamSynchronize(detail::t_stream));
  return Status::ok();
}

template <>
Result<DeviceBuffer> DeviceBuffer::allocate(size_t bytes, std::string_view what) {
  DeviceBuffer b;
  if (bytes == 0) return b;
  TANDEM_RETURN_IF_ERROR(check_free_memory(bytes, what));
  const cudaError_t err = cudaMalloc(&b.ptr_, bytes);
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // not sticky: clear it so later calls do not report it
    return resource_exhausted(std::string(what) + ": cudaMalloc of " + format_bytes(bytes) + " failed: out of memory");
  }
  TANDEM_CUDA_CHECK("DeviceBuffer::allocate", err);
  b.bytes_ = bytes;
  return b;
}

template <>
void DeviceBuffer::release() {
  // cudaFree synchronises the device; buffers live as long as their runner, so
  // this happens at teardown, not on the hot path.
  if (ptr_) (void)cudaFree(ptr_);
}

template <>
Result<PinnedBuffer> PinnedBuffer::allocate(size_t bytes, std::string_view what) {
  PinnedBuffer b;
  if (bytes == 0) return b;
  const cudaError_t err = cudaMallocHost(&b.ptr_, bytes);
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    return resource_exhausted(std::string(what) + ": cudaMallocHost of " + format_bytes(bytes) +
                              " failed: out of page-locked host memory");
  }
  TANDEM_CUDA_CHECK("PinnedBuffer::allocate", err);
  b.bytes_ = bytes;
  return b;
}

template <>
void PinnedBuffer::release() {
  if (ptr_) (void)cudaFreeHost(ptr_);
}

Status set_device(int ordinal) {
  TANDEM_ASSIGN_OR_RETURN(int n, device_count());
  if (ordinal < 0 || ordinal >= n)
    return failed_precondition("CUDA device " + std::to_string(ordinal) + " does not exist: " + std::to_string(n) +
                               " visible");
  TANDEM_CUDA_CHECK("set_device", cudaSetDevice(ordinal));
  return Status::ok();
}

Result<Graph> Graph::capture(const std::function<Status()>& work) {
  const char* op = "Graph::capture";
  cudaStream_t stream = detail::t_stream;
  TANDEM_CUDA_CHECK(op, cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  const Status worked = work();
  cudaGraph_t graph = nullptr;
  // Always end the capture, so the stream leaves capture mode whatever happened.
  const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
  if (!worked.is_ok() || ended != cudaSuccess) {
    (void)cudaGetLastError();  // capture errors are not sticky; clear the last one
    if (graph) (void)cudaGraphDestroy(graph);
    if (!worked.is_ok()) return worked.with_context(op);
    return internal_error(std::string(op) + ": cudaStreamEndCapture failed: " + cudaGetErrorString(ended));
  }
  Graph g;
  g.graph_ = graph;
  cudaGraphExec_t exec = nullptr;
  const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
  if (made != cudaSuccess) {
    (void)cudaGetLastError();
    return internal_error(std::string(op) + ": cudaGraphInstantiate failed: " + cudaGetErrorString(made));
  }
  g.exec_ = exec;
  return g;
}

Graph::Graph(Graph&& other) noexcept : graph_(other.graph_), exec_(other.exec_) {
  other.graph_ = nullptr;
  other.exec_ = nullptr;
}

Graph& Graph::operator=(Graph&& other) noexcept {
  if (this != &other) {
    release();
    graph_ = other.graph_;
    exec_ = other.exec_;
    other.graph_ = nullptr;
    other.exec_ = nullptr;
  }
  return *this;
}

Graph::~Graph() { release(); }

void Graph::release() {
  if (exec_) (void)cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_) (void)cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
  exec_ = nullptr;
  graph_ = nullptr;
}

Status Graph::launch() const {
  if (!exec_) return failed_precondition("Graph::launch: empty graph");
  TANDEM_CUDA_CHECK("Graph::launch", cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), detail::t_stream));
  return Status::ok();
}

Result<Stream> Stream::create(std::string_view what) {
  cudaStream_t s = nullptr;
  const std::string op = "stream for " + std::string(what);
  TANDEM_CUDA_CHECK(op.c_str(), cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  Stream out;
  out.s_ = s;
  return out;
}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    if (s_) (void)cudaStreamDestroy(static_cast<cudaStream_t>(s_));
    s_ = other.s_;
    other.s_ = nullptr;
  }
  return *this;
}

Stream::~Stream() {
  if (s_) (void)cudaStreamDestroy(static_cast<cudaStream_t>(s_));
}

Result<Event> Event::create(std::string_view what) {
  cudaEvent_t e = nullptr;
  const std::string op = "event for " + std::string(what);
  TANDEM_CUDA_CHECK(op.c_str(), cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  Event out;
  out.e_ = e;
  return out;
}

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    if (e_) (void)cudaEventDestroy(static_cast<cudaEvent_t>(e_));
    e_ = other.e_;
    other.e_ = nullptr;
  }
  return *this;
}

Event::~Event() {
  if (e_) (void)cudaEventDestroy(static_cast<cudaEvent_t>(e_));
}

Status Event::record(void* stream) {
  if (!e_) return failed_precondition("Event::record: no event");
  TANDEM_CUDA_CHECK("Event::record", cudaEventRecord(static_cast<cudaEvent_t>(e_),
                                                     stream ? static_cast<cudaStream_t>(stream) : detail::t_stream));
  return Status::ok();
}

Status Event::enqueue_wait(void* stream) const {
  if (!e_) return failed_precondition("Event::enqueue_wait: no event");
  TANDEM_CUDA_CHECK("Event::enqueue_wait",
                    cudaStreamWaitEvent(stream ? static_cast<cudaStream_t>(stream) : detail::t_stream,
                                        static_cast<cudaEvent_t>(e_), 0));
  return Status::ok();
}

Result<bool> Event::done() const {
  if (!e_) return failed_precondition("Event::done: no event");
  const cudaError_t r = cudaEventQuery(static_cast<cudaEvent_t>(e_));
  if (r == cudaSuccess) return true;
  if (r == cudaErrorNotReady) return false;
  TANDEM_CUDA_CHECK("Event::done", r);
  return false;
}

Status Event::wait_for(std::chrono::microseconds timeout, std::string_view what) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto pause = std::chrono::microseconds(5);
  while (true) {
    TANDEM_ASSIGN_OR_RETURN(const bool finished, done());
    if (finished) return Status::ok();
    if (std::chrono::steady_clock::now() > deadline)
      return {StatusCode::kDeadlineExceeded, std::string(what) + ": not done after " +
                                                 std::to_string(timeout.count() / 1000) + " ms"};
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(500));
  }
}

Status copy_to_host_async(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return Status::ok();
  TANDEM_CUDA_CHECK("copy_to_host_async",
                    cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, detail::t_stream));
  return Status::ok();
}

Status copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return Status::ok();
  TANDEM_CUDA_CHECK("copy_to_device", cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, detail::t_stream));
  return Status::ok();
}

Status copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return Status::ok();
  TANDEM_CUDA_CHECK("copy_to_host", cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, detail::t_stream));
  TANDEM_CUDA_CHECK("copy_to_host", cudaStreamSynchronize(detail::t_stream));
  return Status::ok();
}

Status fill_zero(void* dst, size_t bytes) {
  if (bytes == 0) return Status::ok();
  TANDEM_CUDA_CHECK("fill_zero", cudaMemsetAsync(dst, 0, bytes, detail::t_stream));
  return Status::ok();
}

}  // namespace tandem::kernels::cuda
