// Same-host GPU-direct M2N channel over CUDA IPC.
//
// A receiver owns, on its current device, a region of `slots` fixed-size slots
// and one 64-bit sequence flag per slot (zero at creation). It exports a
// handle blob (export_handle) that a sender in ANOTHER process of the same host
// opens (CudaIpcSender::open). A send is one kernel on the sender's stream that
// copies the message straight into the receiver's slot (device to device, over
// NVLink/PCIe peer access when the two processes use different GPUs) and, once
// every byte is written, fences at system scope and release-stores `seq` into
// the receiver's flag of that slot. The receiver's wait enqueues on its own
// stream a one-thread kernel that spins (acquire loads, nanosleep backoff) until
// the flag reaches `seq`, so work queued after it on that stream reads the
// message. No host staging and no host involvement on the data path; the only
// host calls are the launches.
//
// Protocol (the caller's, not enforced here): per slot, sequence numbers only
// grow (seq >= 1; a wait for seq is satisfied by any later seq too), and a
// sender must not overwrite a slot the receiver has not finished reading, e.g.
// by rotating over the slots with credits returned on a reverse channel.
//
// Timeouts: a wait whose flag does not reach seq within the timeout stops
// spinning and records the first such failure in a device-side error word;
// the work queued after it on the stream then runs on stale data. Until
// check() has reported it, later waits of the same receiver return at once
// (the channel is broken; they do not each add a timeout). After
// synchronising the stream, check() turns the recorded failure into
// DEADLINE_EXCEEDED naming the slot and the sequence number (and clears it).
//
// Same process: CUDA cannot open a process's own IPC handles, so open() refuses
// a blob exported by the calling process (FAILED_PRECONDITION); in-process
// users write to CudaIpcReceiver::slot() directly. Different hosts (hostname or
// boot id differ): UNAVAILABLE. The owning GPU not visible, or no peer access
// from the sender's current device to it: FAILED_PRECONDITION.
//
// Single GPU caveat: two processes on one GPU without MPS are time-sliced, so
// a wait kernel spinning in one process delays the other's kernels by up to a
// scheduler time slice. Run an MPS daemon (or use different GPUs) for
// latency-sensitive use; see benchmarks/cuda_ipc_bench.cpp.
//
// This header includes no CUDA header and is C++17-clean: device pointers and
// streams (cudaStream_t) are void*. The implementation (kernels/cuda/ipc.cu)
// exists in builds with CUDA only; the blob parsing and serialisation need no
// device.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "tandem/common/status.h"

namespace tandem::transport {

// The decoded contents of a receiver's handle blob.
struct CudaIpcHandleInfo {
  static constexpr uint32_t kVersion = 1;
  static constexpr size_t kIpcHandleBytes = 64;  // sizeof(cudaIpcMemHandle_t)

  uint64_t slots = 0;
  uint64_t slot_bytes = 0;   // largest message a slot holds
  uint64_t slot_stride = 0;  // distance between slots: slot_bytes rounded up to 256
  int64_t pid = 0;           // the exporting process
  std::array<uint8_t, 16> device_uuid{};
  std::string pci_bus_id;    // "0000:3B:00.0", for messages
  std::string hostname;
  std::string boot_id;       // /proc/sys/kernel/random/boot_id; empty if unreadable
  std::array<uint8_t, kIpcHandleBytes> data_handle{};   // the slot region
  std::array<uint8_t, kIpcHandleBytes> flags_handle{};  // the per-slot flags
};

// Byte layout (native endianness, one host): "TNDMCIPC", u32 version, u32 size
// of the whole blob, then the fields above, strings as fixed NUL-padded fields.
std::string serialize_cuda_ipc_handle(const CudaIpcHandleInfo& info);
// INVALID_ARGUMENT for a blob that is truncated, too long, has the wrong magic
// or version, or inconsistent sizes (zero slots, stride < slot_bytes, overflow).
// Needs no device.
Result<CudaIpcHandleInfo> parse_cuda_ipc_handle(const std::string& blob);
// OK when `info` was exported on this host by another process; UNAVAILABLE for
// another host, FAILED_PRECONDITION for the calling process. Needs no device.
Status check_cuda_ipc_peer(const CudaIpcHandleInfo& info);

class CudaIpcReceiver {
 public:
  // Allocates slots * stride bytes (cudaMalloc: IPC needs it, not the async
  // pool) and the zeroed flags on the calling thread's current device.
  // INVALID_ARGUMENT for zero or overflowing sizes; RESOURCE_EXHAUSTED when the
  // device cannot hold them.
  static Result<std::unique_ptr<CudaIpcReceiver>> create(size_t slots, size_t slot_bytes);
  ~CudaIpcReceiver();
  CudaIpcReceiver(const CudaIpcReceiver&) = delete;
  CudaIpcReceiver& operator=(const CudaIpcReceiver&) = delete;

  // The blob for CudaIpcSender::open in another process of this host.
  const std::string& export_handle() const { return blob_; }

  size_t slots() const { return info_.slots; }
  size_t slot_bytes() const { return info_.slot_bytes; }
  // Device pointer to slot i (nullptr when out of range); 256-byte aligned.
  void* slot(size_t i) const;

  // Enqueues on `stream` (a cudaStream_t; nullptr = cudaStreamPerThread) a wait
  // until flag[slot] >= seq, giving up after `timeout` (see check()).
  Status wait(size_t slot, uint64_t seq, void* stream, std::chrono::microseconds timeout);
  // After the waits' streams are synchronised: DEADLINE_EXCEEDED naming the
  // slot, seq and the last flag value seen by the first wait that timed out
  // since the previous check (then cleared); OK otherwise.
  Status check();
  // Host read of flag[slot] (a small synchronous copy on a private stream), for
  // tests and diagnostics.
  Result<uint64_t> poll(size_t slot);

 private:
  CudaIpcReceiver() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  CudaIpcHandleInfo info_;
  std::string blob_;
};

class CudaIpcSender {
 public:
  struct Options {
    // false: one kernel copies the message and then signals (one launch per
    // send). true: cudaMemcpyAsync (copy engine) then a one-thread signalling
    // kernel, for comparison.
    bool copy_engine = false;
  };

  // Validates the blob (parse_cuda_ipc_handle, check_cuda_ipc_peer), finds the
  // owning GPU among the visible ones and maps the receiver's allocations into
  // the current device's context (cudaIpcMemLazyEnablePeerAccess).
  static Result<std::unique_ptr<CudaIpcSender>> open(const std::string& blob);
  static Result<std::unique_ptr<CudaIpcSender>> open(const std::string& blob, const Options& options);
  // Unmaps the receiver's allocations; sends still queued must have completed
  // (synchronise their streams first).
  ~CudaIpcSender();
  CudaIpcSender(const CudaIpcSender&) = delete;
  CudaIpcSender& operator=(const CudaIpcSender&) = delete;

  size_t slots() const { return info_.slots; }
  size_t slot_bytes() const { return info_.slot_bytes; }
  // CUDA maps a handle once per process and device, so one sender per receiver
  // and process; switch its mode here rather than opening the blob again.
  void set_options(const Options& options) { options_ = options; }
  const Options& options() const { return options_; }

  // Enqueues on `stream` (nullptr = cudaStreamPerThread) the copy of `bytes`
  // from device memory `device_src` into the receiver's slot, then the store of
  // `seq` into its flag. Returns without waiting. INVALID_ARGUMENT for a slot
  // out of range, bytes > slot_bytes, seq 0 or a null source with bytes > 0.
  // `device_src` must stay valid until the stream reaches the send.
  Status send(size_t slot, const void* device_src, size_t bytes, uint64_t seq, void* stream);

 private:
  CudaIpcSender() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  CudaIpcHandleInfo info_;
  Options options_;
};

}  // namespace tandem::transport
