// CUDA IPC M2N channel (tandem/transport/cuda_ipc.h): the receiver's slots and
// flags, the device-side wait, and the sender's copy-and-signal kernel.
//
// Ordering: a send's blocks each copy their share, then (after __syncthreads)
// thread 0 fences at system scope and bumps a per-slot arrival counter in the
// sender's own memory; the block that arrives last fences again (acquiring
// every other block's writes through the counter) and release-stores seq into
// the receiver's flag at system scope. The receiver's wait kernel
// acquire-loads the flag; kernels and copies queued after it on its stream
// start only when it has returned, so they see the message.
#include <cuda_runtime.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "check.h"
#include "ipc_host.h"
#include "tandem/kernels/cuda.h"
#include "tandem/transport/cuda_ipc.h"

namespace tandem::transport {
namespace {

namespace kc = tandem::kernels::cuda;
namespace kd = tandem::kernels::cuda::detail;

static_assert(sizeof(cudaIpcMemHandle_t) == CudaIpcHandleInfo::kIpcHandleBytes,
              "cudaIpcMemHandle_t size changed: bump the blob version");
static_assert(sizeof(cudaUUID_t) == sizeof(CudaIpcHandleInfo{}.device_uuid), "cudaUUID_t is 16 bytes");

constexpr size_t kStrideAlign = 256;
constexpr int kCopyThreads = 512;
constexpr int kCopyUnroll = 4;

// The first wait that timed out since the last check(); code 0 = none.
struct WaitError {
  unsigned int code;
  unsigned int slot;
  unsigned long long seq;
  unsigned long long seen;
  unsigned long long waited_ns;
};

cudaStream_t as_stream(void* s) { return s ? static_cast<cudaStream_t>(s) : cudaStreamPerThread; }

// ---- device code --------------------------------------------------------------

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ unsigned long long load_acquire_sys(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void store_release_sys(unsigned long long* p, unsigned long long v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__global__ void wait_kernel(const unsigned long long* flag, unsigned int slot, unsigned long long seq,
                            unsigned long long timeout_ns, WaitError* err) {
  const unsigned long long start = global_ns();
  unsigned int backoff = 32;
  for (;;) {
    const unsigned long long v = load_acquire_sys(flag);
    if (v >= seq) return;
    // Fail fast: once a wait of this receiver timed out, the channel is broken
    // until check() reports it, so later waits do not add their own timeouts.
    if (*static_cast<volatile unsigned int*>(&err->code) != 0) return;
    const unsigned long long waited = global_ns() - start;
    if (waited >= timeout_ns) {
      if (atomicCAS(&err->code, 0u, 1u) == 0u) {
        err->slot = slot;
        err->seq = seq;
        err->seen = v;
        err->waited_ns = waited;
      }
      return;
    }
    __nanosleep(backoff);
    if (backoff < 256) backoff *= 2;
  }
}

// Release side shared by both send modes: everything this thread wrote or
// observed before is visible system-wide before the flag says so.
__device__ __forceinline__ void publish(unsigned long long* flag, unsigned long long seq) {
  __threadfence_system();
  store_release_sys(flag, seq);
}

// Copies `bytes` from src to dst (16-byte vectors when both are aligned, bytes
// for the rest), then the last block to finish publishes seq.
__global__ void copy_signal_kernel(const unsigned char* __restrict__ src, unsigned char* __restrict__ dst,
                                   size_t bytes, bool vec, unsigned int* arrivals, unsigned long long* flag,
                                   unsigned long long seq) {
  const size_t tid = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t done = 0;
  if (vec) {
    const uint4* s = reinterpret_cast<const uint4*>(src);
    uint4* d = reinterpret_cast<uint4*>(dst);
    const size_t n = bytes / 16;
    size_t i = tid;
    for (; i + (kCopyUnroll - 1) * stride < n; i += kCopyUnroll * stride) {
      uint4 v[kCopyUnroll];
#pragma unroll
      for (int u = 0; u < kCopyUnroll; ++u) v[u] = s[i + u * stride];
#pragma unroll
      for (int u = 0; u < kCopyUnroll; ++u) d[i + u * stride] = v[u];
    }
    for (; i < n; i += stride) d[i] = s[i];
    done = n * 16;
  }
  for (size_t i = done + tid; i < bytes; i += stride) dst[i] = src[i];

  __syncthreads();
  if (threadIdx.x != 0) return;
  __threadfence_system();
  if (atomicAdd(arrivals, 1u) != gridDim.x - 1) return;
  // Last block: the fence pairs with the other blocks' fences through the counter.
  __threadfence_system();
  *arrivals = 0;  // ready for the next send to this slot (stream-ordered after this one)
  publish(flag, seq);
}

__global__ void signal_kernel(unsigned long long* flag, unsigned long long seq) { publish(flag, seq); }

// ---- host helpers -------------------------------------------------------------

Status check_device(const char* op, int expected) {
  int dev = 0;
  TANDEM_CUDA_CHECK(op, cudaGetDevice(&dev));
  if (dev != expected) {
    return failed_precondition(std::string(op) + ": the calling thread's current device is " + std::to_string(dev) +
                               ", the channel lives on device " + std::to_string(expected) +
                               " (cudaSetDevice first)");
  }
  return Status::ok();
}

Status slot_out_of_range(const char* op, size_t slot, size_t slots) {
  return invalid_argument(std::string(op) + ": slot " + std::to_string(slot) + " out of range (" +
                          std::to_string(slots) + " slots)");
}

std::string uuid_text(const std::array<uint8_t, 16>& u) {
  static const char* kHex = "0123456789abcdef";
  std::string s = "GPU-";
  for (size_t i = 0; i < u.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    s += kHex[u[i] >> 4];
    s += kHex[u[i] & 15];
  }
  return s;
}

// Ordinal of the visible device with this UUID; FAILED_PRECONDITION if none.
Result<int> find_device(const CudaIpcHandleInfo& info, const char* op) {
  TANDEM_ASSIGN_OR_RETURN(int n, kc::device_count());
  for (int d = 0; d < n; ++d) {
    cudaDeviceProp prop{};
    TANDEM_CUDA_CHECK(op, cudaGetDeviceProperties(&prop, d));
    if (std::memcmp(prop.uuid.bytes, info.device_uuid.data(), info.device_uuid.size()) == 0) return d;
  }
  return failed_precondition(std::string(op) + ": the receiver's GPU " + uuid_text(info.device_uuid) + " (PCI " +
                             info.pci_bus_id + ") is not among the " + std::to_string(n) +
                             " GPUs visible to this process (CUDA_VISIBLE_DEVICES?)");
}

}  // namespace

// ---- receiver -------------------------------------------------------------------

struct CudaIpcReceiver::Impl {
  int device = 0;
  kc::DeviceBuffer data;
  kc::DeviceBuffer flags;
  kc::DeviceBuffer error;
  cudaStream_t control = nullptr;  // private, non-blocking: check() and poll()

  ~Impl() {
    if (control) (void)cudaStreamDestroy(control);
  }
};

Result<std::unique_ptr<CudaIpcReceiver>> CudaIpcReceiver::create(size_t slots, size_t slot_bytes) {
  const char* op = "CudaIpcReceiver::create";
  if (slots == 0 || slot_bytes == 0) {
    return invalid_argument(std::string(op) + ": " + std::to_string(slots) + " slots of " +
                            std::to_string(slot_bytes) + " bytes: both must be positive");
  }
  if (slot_bytes > SIZE_MAX - kStrideAlign) {
    return invalid_argument(std::string(op) + ": slot of " + std::to_string(slot_bytes) + " bytes is too large");
  }
  const size_t stride = (slot_bytes + kStrideAlign - 1) / kStrideAlign * kStrideAlign;
  if (stride > SIZE_MAX / slots) {
    return invalid_argument(std::string(op) + ": " + std::to_string(slots) + " slots of " +
                            std::to_string(slot_bytes) + " bytes overflow the address space");
  }
  std::unique_ptr<CudaIpcReceiver> r(new CudaIpcReceiver());
  r->impl_ = std::make_unique<Impl>();
  Impl& m = *r->impl_;
  TANDEM_CUDA_CHECK(op, cudaGetDevice(&m.device));
  cudaDeviceProp prop{};
  TANDEM_CUDA_CHECK(op, cudaGetDeviceProperties(&prop, m.device));
  char pci[32] = {};
  TANDEM_CUDA_CHECK(op, cudaDeviceGetPCIBusId(pci, sizeof pci - 1, m.device));

  // cudaMalloc'ed (DeviceBuffer), as cudaIpcGetMemHandle requires.
  TANDEM_ASSIGN_OR_RETURN(m.data, kc::DeviceBuffer::allocate(slots * stride, "CUDA IPC receive slots"));
  TANDEM_ASSIGN_OR_RETURN(m.flags, kc::DeviceBuffer::allocate(slots * sizeof(uint64_t), "CUDA IPC slot flags"));
  TANDEM_ASSIGN_OR_RETURN(m.error, kc::DeviceBuffer::allocate(sizeof(WaitError), "CUDA IPC wait error"));
  TANDEM_CUDA_CHECK(op, cudaStreamCreateWithFlags(&m.control, cudaStreamNonBlocking));
  TANDEM_CUDA_CHECK(op, cudaMemsetAsync(m.flags.data(), 0, m.flags.size(), m.control));
  TANDEM_CUDA_CHECK(op, cudaMemsetAsync(m.error.data(), 0, m.error.size(), m.control));
  TANDEM_CUDA_CHECK(op, cudaStreamSynchronize(m.control));

  cudaIpcMemHandle_t data_handle{}, flags_handle{};
  TANDEM_CUDA_CHECK(op, cudaIpcGetMemHandle(&data_handle, m.data.data()));
  TANDEM_CUDA_CHECK(op, cudaIpcGetMemHandle(&flags_handle, m.flags.data()));

  CudaIpcHandleInfo& info = r->info_;
  info.slots = slots;
  info.slot_bytes = slot_bytes;
  info.slot_stride = stride;
  info.pid = static_cast<int64_t>(getpid());
  std::memcpy(info.device_uuid.data(), prop.uuid.bytes, info.device_uuid.size());
  info.pci_bus_id = pci;
  info.hostname = detail::local_hostname();
  info.boot_id = detail::local_boot_id();
  std::memcpy(info.data_handle.data(), &data_handle, sizeof data_handle);
  std::memcpy(info.flags_handle.data(), &flags_handle, sizeof flags_handle);
  if (info.hostname.empty()) return internal_error(std::string(op) + ": gethostname failed");
  r->blob_ = serialize_cuda_ipc_handle(info);
  return Result<std::unique_ptr<CudaIpcReceiver>>(std::move(r));
}

CudaIpcReceiver::~CudaIpcReceiver() = default;

void* CudaIpcReceiver::slot(size_t i) const {
  if (i >= info_.slots) return nullptr;
  return static_cast<char*>(impl_->data.data()) + i * info_.slot_stride;
}

Status CudaIpcReceiver::wait(size_t slot, uint64_t seq, void* stream, std::chrono::microseconds timeout) {
  const char* op = "CudaIpcReceiver::wait";
  if (slot >= info_.slots) return slot_out_of_range(op, slot, info_.slots);
  if (timeout.count() < 0) return invalid_argument(std::string(op) + ": negative timeout");
  TANDEM_RETURN_IF_ERROR(check_device(op, impl_->device));
  const unsigned long long timeout_ns = static_cast<unsigned long long>(timeout.count()) * 1000ull;
  wait_kernel<<<1, 1, 0, as_stream(stream)>>>(impl_->flags.as<unsigned long long>() + slot,
                                                static_cast<unsigned int>(slot), seq, timeout_ns,
                                                impl_->error.as<WaitError>());
  TANDEM_CUDA_CHECK_LAUNCH(op);
  return Status::ok();
}

Status CudaIpcReceiver::check() {
  const char* op = "CudaIpcReceiver::check";
  WaitError e{};
  TANDEM_CUDA_CHECK(op, cudaMemcpyAsync(&e, impl_->error.data(), sizeof e, cudaMemcpyDeviceToHost, impl_->control));
  TANDEM_CUDA_CHECK(op, cudaStreamSynchronize(impl_->control));
  if (e.code == 0) return Status::ok();
  TANDEM_CUDA_CHECK(op, cudaMemsetAsync(impl_->error.data(), 0, sizeof e, impl_->control));
  TANDEM_CUDA_CHECK(op, cudaStreamSynchronize(impl_->control));
  return Status(StatusCode::kDeadlineExceeded,
                "CUDA IPC wait: slot " + std::to_string(e.slot) + " did not reach seq " + std::to_string(e.seq) +
                    " within " + std::to_string(e.waited_ns / 1000) + " us (flag was " + std::to_string(e.seen) +
                    "); the work queued after that wait ran on stale data");
}

Result<uint64_t> CudaIpcReceiver::poll(size_t slot) {
  const char* op = "CudaIpcReceiver::poll";
  if (slot >= info_.slots) return slot_out_of_range(op, slot, info_.slots);
  uint64_t v = 0;
  TANDEM_CUDA_CHECK(op, cudaMemcpyAsync(&v, impl_->flags.as<uint64_t>() + slot, sizeof v, cudaMemcpyDeviceToHost,
                                        impl_->control));
  TANDEM_CUDA_CHECK(op, cudaStreamSynchronize(impl_->control));
  return v;
}

// ---- sender ---------------------------------------------------------------------

struct CudaIpcSender::Impl {
  int device = 0;
  int sm_count = 1;
  void* data = nullptr;   // the receiver's slots, mapped here
  void* flags = nullptr;  // the receiver's flags, mapped here
  kc::DeviceBuffer arrivals;  // one block-arrival counter per slot, local

  ~Impl() {
    // Errors are not actionable here (the peer may be gone); the mapping dies
    // with the context anyway.
    if (flags) (void)cudaIpcCloseMemHandle(flags);
    if (data) (void)cudaIpcCloseMemHandle(data);
  }
};

namespace {

// cudaIpcOpenMemHandle with an error that says whose memory it was.
Status open_mapping(const CudaIpcHandleInfo& info, const std::array<uint8_t, 64>& bytes, const char* what,
                    void** out) {
  cudaIpcMemHandle_t h;
  std::memcpy(&h, bytes.data(), sizeof h);
  const cudaError_t err = cudaIpcOpenMemHandle(out, h, cudaIpcMemLazyEnablePeerAccess);
  if (err == cudaSuccess) return Status::ok();
  (void)cudaGetLastError();
  *out = nullptr;
  return unavailable(std::string("CudaIpcSender::open: cudaIpcOpenMemHandle of the ") + what + " exported by pid " +
                     std::to_string(info.pid) + " on " + uuid_text(info.device_uuid) + " (PCI " + info.pci_bus_id +
                     ") failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                     "); is the receiving process still alive and its receiver not destroyed?");
}

}  // namespace

Result<std::unique_ptr<CudaIpcSender>> CudaIpcSender::open(const std::string& blob) { return open(blob, Options()); }

Result<std::unique_ptr<CudaIpcSender>> CudaIpcSender::open(const std::string& blob, const Options& options) {
  const char* op = "CudaIpcSender::open";
  TANDEM_ASSIGN_OR_RETURN(CudaIpcHandleInfo info, parse_cuda_ipc_handle(blob));
  TANDEM_RETURN_IF_ERROR(check_cuda_ipc_peer(info));
  TANDEM_ASSIGN_OR_RETURN(int owner, find_device(info, op));

  std::unique_ptr<CudaIpcSender> s(new CudaIpcSender());
  s->impl_ = std::make_unique<Impl>();
  s->options_ = options;
  Impl& m = *s->impl_;
  TANDEM_CUDA_CHECK(op, cudaGetDevice(&m.device));
  if (m.device != owner) {
    int can = 0;
    TANDEM_CUDA_CHECK(op, cudaDeviceCanAccessPeer(&can, m.device, owner));
    if (!can) {
      return failed_precondition(std::string(op) + ": the receiver's GPU " + std::to_string(owner) + " (" +
                                 uuid_text(info.device_uuid) + ", PCI " + info.pci_bus_id +
                                 ") is not peer-accessible from this thread's current GPU " +
                                 std::to_string(m.device) + "; open from a GPU with P2P access to it");
    }
  }
  TANDEM_ASSIGN_OR_RETURN(m.sm_count, kd::sm_count(op));
  TANDEM_RETURN_IF_ERROR(open_mapping(info, info.data_handle, "slot region", &m.data));
  TANDEM_RETURN_IF_ERROR(open_mapping(info, info.flags_handle, "slot flags", &m.flags));
  TANDEM_ASSIGN_OR_RETURN(m.arrivals,
                          kc::DeviceBuffer::allocate(info.slots * sizeof(unsigned int), "CUDA IPC send counters"));
  TANDEM_CUDA_CHECK(op, cudaMemsetAsync(m.arrivals.data(), 0, m.arrivals.size(), cudaStreamPerThread));
  TANDEM_CUDA_CHECK(op, cudaStreamSynchronize(cudaStreamPerThread));
  s->info_ = std::move(info);
  return Result<std::unique_ptr<CudaIpcSender>>(std::move(s));
}

CudaIpcSender::~CudaIpcSender() = default;

Status CudaIpcSender::send(size_t slot, const void* device_src, size_t bytes, uint64_t seq, void* stream) {
  const char* op = "CudaIpcSender::send";
  if (slot >= info_.slots) return slot_out_of_range(op, slot, info_.slots);
  if (bytes > info_.slot_bytes) {
    return invalid_argument(std::string(op) + ": message of " + std::to_string(bytes) + " bytes does not fit a slot of " +
                            std::to_string(info_.slot_bytes) + " bytes");
  }
  if (seq == 0) return invalid_argument(std::string(op) + ": seq must be >= 1 (flags start at 0)");
  if (bytes > 0 && device_src == nullptr) return invalid_argument(std::string(op) + ": null source");
  TANDEM_RETURN_IF_ERROR(check_device(op, impl_->device));

  const cudaStream_t s = as_stream(stream);
  unsigned char* dst = static_cast<unsigned char*>(impl_->data) + slot * info_.slot_stride;
  unsigned long long* flag = static_cast<unsigned long long*>(impl_->flags) + slot;
  if (options_.copy_engine) {
    if (bytes > 0) TANDEM_CUDA_CHECK(op, cudaMemcpyAsync(dst, device_src, bytes, cudaMemcpyDeviceToDevice, s));
    signal_kernel<<<1, 1, 0, s>>>(flag, seq);
    TANDEM_CUDA_CHECK_LAUNCH(op);
    return Status::ok();
  }
  // dst is 256-byte aligned (slot stride); vectors need the source aligned too.
  const bool vec = reinterpret_cast<uintptr_t>(device_src) % 16 == 0;
  const size_t per_block = static_cast<size_t>(kCopyThreads) * (vec ? 16 * kCopyUnroll : 4);
  size_t blocks = (bytes + per_block - 1) / per_block;
  const size_t max_blocks = static_cast<size_t>(impl_->sm_count) * 4;
  if (blocks > max_blocks) blocks = max_blocks;
  if (blocks == 0) blocks = 1;
  copy_signal_kernel<<<static_cast<unsigned int>(blocks), kCopyThreads, 0, s>>>(
      static_cast<const unsigned char*>(device_src), dst, bytes, vec, impl_->arrivals.as<unsigned int>() + slot, flag,
      seq);
  TANDEM_CUDA_CHECK_LAUNCH(op);
  return Status::ok();
}

}  // namespace tandem::transport
