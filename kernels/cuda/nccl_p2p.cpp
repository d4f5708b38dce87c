// NCCL loaded at run time, and two-rank communicators over it (see
// include/tandem/transport/nccl_p2p.h).
#include "tandem/transport/nccl_p2p.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>

#if __has_include(<nccl.h>)
#include <nccl.h>
#define TANDEM_HAVE_NCCL_HEADER 1
#else
#define TANDEM_HAVE_NCCL_HEADER 0
#endif

namespace tandem::transport {

#if TANDEM_HAVE_NCCL_HEADER

namespace {

// The entry points used, resolved from libnccl.so.2. The types come from the
// header this was built with; NCCL keeps them ABI-stable within major
// version 2, and ncclConfig_t carries its own size and version.
struct NcclApi {
  ncclResult_t (*get_version)(int*) = nullptr;
  ncclResult_t (*get_unique_id)(ncclUniqueId*) = nullptr;
  ncclResult_t (*init_rank_config)(ncclComm_t*, int, ncclUniqueId, int, ncclConfig_t*) = nullptr;
  ncclResult_t (*get_async_error)(ncclComm_t, ncclResult_t*) = nullptr;
  ncclResult_t (*abort)(ncclComm_t) = nullptr;
  ncclResult_t (*send)(const void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t) = nullptr;
  ncclResult_t (*recv)(void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t) = nullptr;
  const char* (*error_string)(ncclResult_t) = nullptr;
  const char* (*last_error)(ncclComm_t) = nullptr;
  int version = 0;
};

struct Loaded {
  NcclApi api;
  Status status;
};

const Loaded& loaded() {
  static const Loaded l = [] {
    Loaded out;
    // Never unloaded: NCCL keeps threads that outlive any scope of ours.
    void* lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* why = dlerror();
      out.status = unavailable(std::string("NCCL could not be loaded (") + (why ? why : "dlopen failed") +
                               "); install NCCL 2 or put the directory holding libnccl.so.2 on LD_LIBRARY_PATH");
      return out;
    }
    std::string missing;
    auto bind = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      if (!fn) missing += std::string(missing.empty() ? "" : ", ") + name;
    };
    NcclApi& a = out.api;
    bind(a.get_version, "ncclGetVersion");
    bind(a.get_unique_id, "ncclGetUniqueId");
    bind(a.init_rank_config, "ncclCommInitRankConfig");
    bind(a.get_async_error, "ncclCommGetAsyncError");
    bind(a.abort, "ncclCommAbort");
    bind(a.send, "ncclSend");
    bind(a.recv, "ncclRecv");
    bind(a.error_string, "ncclGetErrorString");
    bind(a.last_error, "ncclGetLastError");
    if (!missing.empty()) {
      out.status = unavailable("libnccl.so.2 lacks " + missing + " (NCCL 2.14 or later is needed)");
      return out;
    }
    if (a.get_version(&a.version) != ncclSuccess || a.version / 10000 != 2) {
      out.status = unavailable("libnccl.so.2 reports version code " + std::to_string(a.version) + ", not NCCL 2");
      return out;
    }
    return out;
  }();
  return l;
}

const NcclApi& api() { return loaded().api; }

Status nccl_error(const char* op, ncclResult_t r, ncclComm_t comm) {
  std::string m = std::string("NCCL ") + op + ": " + api().error_string(r);
  if (const char* detail = api().last_error(comm); detail && *detail) m += std::string(" (") + detail + ")";
  return unavailable(m);
}

// NCCL launches a non-blocking communicator's kernels from a thread of its
// own: the per-thread default stream would be that thread's, not ours.
Status explicit_stream(void* s, const char* op) {
  if (s == nullptr || static_cast<cudaStream_t>(s) == cudaStreamPerThread || static_cast<cudaStream_t>(s) == cudaStreamLegacy)
    return invalid_argument(std::string("NCCL ") + op + ": needs an explicit stream, not a default stream");
  return Status::ok();
}

}  // namespace

Status nccl_available() { return loaded().status; }

std::string nccl_version() {
  if (!loaded().status.is_ok()) return loaded().status.message();
  const int v = api().version;
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

Result<std::string> nccl_unique_id() {
  TANDEM_RETURN_IF_ERROR(nccl_available());
  ncclUniqueId id;
  if (ncclResult_t r = api().get_unique_id(&id); r != ncclSuccess) return nccl_error("ncclGetUniqueId", r, nullptr);
  return std::string(id.internal, sizeof id.internal);
}

struct NcclPair::Impl {
  ncclComm_t comm = nullptr;
  int rank = 0;
  bool ready = false;      // both ranks joined
  bool connecting = false; // the token is posted
  bool connected = false;  // the token's operation is on its stream: the ranks are connected
  bool aborted = false;
  void* token = nullptr;   // 4 bytes of device memory for the connection token
  cudaStream_t token_stream = nullptr;  // where it was allocated and is used (outlives the pair)
  std::mutex mu;  // NCCL calls on one communicator from several threads must not interleave

  // A non-blocking communicator may answer an enqueue or its set-up with
  // "in progress": the next call must wait until it is done.
  Status settle(const char* op, ncclResult_t r, std::chrono::steady_clock::time_point deadline) {
    while (r == ncclInProgress) {
      ncclResult_t state = ncclSuccess;
      if (ncclResult_t q = api().get_async_error(comm, &state); q != ncclSuccess)
        return nccl_error("ncclCommGetAsyncError", q, comm);
      r = state;
      if (r != ncclInProgress) break;
      if (std::chrono::steady_clock::now() > deadline)
        return {StatusCode::kDeadlineExceeded, std::string("NCCL ") + op + ": the other rank did not join in time"};
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    return r == ncclSuccess ? Status::ok() : nccl_error(op, r, comm);
  }
};

Result<std::unique_ptr<NcclPair>> NcclPair::join(const std::string& unique_id, int rank) {
  TANDEM_RETURN_IF_ERROR(nccl_available());
  ncclUniqueId id;
  if (unique_id.size() != sizeof id.internal)
    return invalid_argument("NCCL unique id of " + std::to_string(unique_id.size()) + " bytes, expected " +
                            std::to_string(sizeof id.internal));
  if (rank != 0 && rank != 1) return invalid_argument("NCCL pair rank " + std::to_string(rank) + " (0 or 1)");
  std::memcpy(id.internal, unique_id.data(), sizeof id.internal);
  std::unique_ptr<NcclPair> p(new NcclPair());
  p->impl_ = std::make_unique<Impl>();
  p->impl_->rank = rank;
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  const ncclResult_t r = api().init_rank_config(&p->impl_->comm, 2, id, rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    Status st = nccl_error("ncclCommInitRankConfig", r, p->impl_->comm);
    if (p->impl_->comm) api().abort(p->impl_->comm);
    p->impl_->comm = nullptr;
    return st;
  }
  return p;
}

NcclPair::~NcclPair() {
  abort();
  // Stream-ordered after the (aborted) token operation, without the
  // device-wide wait of cudaFree, which a hung peer could block.
  if (impl_ && impl_->token) (void)cudaFreeAsync(impl_->token, impl_->token_stream);
}

bool NcclPair::is_ready() const { return impl_->ready && impl_->connected && !impl_->aborted; }

Status NcclPair::ready(std::chrono::milliseconds timeout) {
  std::lock_guard<std::mutex> l(impl_->mu);
  if (impl_->aborted) return failed_precondition("NCCL pair was aborted");
  if (impl_->ready) return Status::ok();
  TANDEM_RETURN_IF_ERROR(impl_->settle("ncclCommInitRankConfig", ncclInProgress,
                                       std::chrono::steady_clock::now() + timeout));
  impl_->ready = true;
  return Status::ok();
}

Status NcclPair::start_connect(void* stream) {
  TANDEM_RETURN_IF_ERROR(explicit_stream(stream, "connect"));
  std::lock_guard<std::mutex> l(impl_->mu);
  if (!impl_->ready || impl_->aborted) return failed_precondition("NCCL pair is not ready");
  if (impl_->connecting || impl_->connected) return Status::ok();
  auto s = static_cast<cudaStream_t>(stream);
  if (!impl_->token) {
    if (cudaError_t e = cudaMallocAsync(&impl_->token, 4, s); e != cudaSuccess)
      return unavailable(std::string("NCCL connect: cudaMallocAsync: ") + cudaGetErrorString(e));
    impl_->token_stream = s;
    (void)cudaMemsetAsync(impl_->token, 0, 4, s);
  }
  // Rank 0 sends, rank 1 receives. The result may be "in progress" (the
  // connection waits for the other rank): finish_connect() settles it.
  const ncclResult_t r = impl_->rank == 0 ? api().send(impl_->token, 4, ncclUint8, 1, impl_->comm, s)
                                          : api().recv(impl_->token, 4, ncclUint8, 0, impl_->comm, s);
  if (r != ncclSuccess && r != ncclInProgress) return nccl_error(impl_->rank == 0 ? "ncclSend" : "ncclRecv", r, impl_->comm);
  impl_->connecting = true;
  return Status::ok();
}

Status NcclPair::finish_connect(std::chrono::milliseconds timeout) {
  std::lock_guard<std::mutex> l(impl_->mu);
  if (impl_->aborted) return failed_precondition("NCCL pair was aborted");
  if (impl_->connected) return Status::ok();
  if (!impl_->connecting) return failed_precondition("NCCL pair: finish_connect before start_connect");
  TANDEM_RETURN_IF_ERROR(impl_->settle("connect", ncclInProgress, std::chrono::steady_clock::now() + timeout));
  impl_->connected = true;
  return Status::ok();
}

Status NcclPair::connect(void* stream, std::chrono::milliseconds timeout) {
  TANDEM_RETURN_IF_ERROR(ready(timeout));
  TANDEM_RETURN_IF_ERROR(start_connect(stream));
  return finish_connect(timeout);
}

Status NcclPair::send(const void* device_src, size_t bytes, void* stream) {
  return transfer(true, const_cast<void*>(device_src), bytes, stream);
}

Status NcclPair::recv(void* device_dst, size_t bytes, void* stream) { return transfer(false, device_dst, bytes, stream); }

Status NcclPair::transfer(bool send, void* buf, size_t bytes, void* stream) {
  const char* op = send ? "ncclSend" : "ncclRecv";
  TANDEM_RETURN_IF_ERROR(explicit_stream(stream, op));
  std::lock_guard<std::mutex> l(impl_->mu);
  if (!impl_->connected || impl_->aborted) return failed_precondition("NCCL pair is not connected");
  const auto s = static_cast<cudaStream_t>(stream);
  const int peer = 1 - impl_->rank;
  const ncclResult_t r = send ? api().send(buf, bytes, ncclUint8, peer, impl_->comm, s)
                              : api().recv(buf, bytes, ncclUint8, peer, impl_->comm, s);
  // Connected, so this only waits for NCCL's launch (on a thread of its own).
  return impl_->settle(op, r, std::chrono::steady_clock::now() + std::chrono::seconds(10));
}

Status NcclPair::check() {
  std::lock_guard<std::mutex> l(impl_->mu);
  if (impl_->aborted) return failed_precondition("NCCL pair was aborted");
  ncclResult_t state = ncclSuccess;
  if (ncclResult_t q = api().get_async_error(impl_->comm, &state); q != ncclSuccess)
    return nccl_error("ncclCommGetAsyncError", q, impl_->comm);
  if (state != ncclSuccess && state != ncclInProgress) return nccl_error("communicator", state, impl_->comm);
  return Status::ok();
}

void NcclPair::abort() {
  if (!impl_) return;
  std::lock_guard<std::mutex> l(impl_->mu);
  if (impl_->aborted || !impl_->comm) return;
  impl_->aborted = true;
  (void)api().abort(impl_->comm);
  impl_->comm = nullptr;
}

#else  // no nccl.h at build time

namespace {
Status not_built() {
  return unimplemented("this tandem was built without NCCL's header (nccl.h), so transport.backend: nccl is "
                       "not available; rebuild where NCCL is installed");
}
}  // namespace

Status nccl_available() { return not_built(); }
std::string nccl_version() { return not_built().message(); }
Result<std::string> nccl_unique_id() { return not_built(); }

struct NcclPair::Impl {};
Result<std::unique_ptr<NcclPair>> NcclPair::join(const std::string&, int) { return not_built(); }
NcclPair::~NcclPair() = default;
bool NcclPair::is_ready() const { return false; }
Status NcclPair::ready(std::chrono::milliseconds) { return not_built(); }
Status NcclPair::start_connect(void*) { return not_built(); }
Status NcclPair::finish_connect(std::chrono::milliseconds) { return not_built(); }
Status NcclPair::connect(void*, std::chrono::milliseconds) { return not_built(); }
Status NcclPair::send(const void*, size_t, void*) { return not_built(); }
Status NcclPair::recv(void*, size_t, void*) { return not_built(); }
Status NcclPair::transfer(bool, void*, size_t, void*) { return not_built(); }
Status NcclPair::check() { return not_built(); }
void NcclPair::abort() {}

#endif

}  // namespace tandem::transport
