// NCCL point-to-point between two processes, each on its own GPU: the
// comparison backend of the M2N data plane (transport.backend: nccl) for
// machines with several GPUs. CUDA IPC (cuda_ipc.h) is the same-host default.
//
// NCCL is loaded at run time (dlopen of libnccl.so.2), not linked: a tandem
// built where NCCL is installed still starts on a GPU machine without it, and
// only this backend is refused there, with the loader's reason.
//
// One NcclPair is a communicator of exactly two ranks. Its initialisation is
// non-blocking (NCCL's config.blocking = 0), so neither side hangs when the
// other never joins: ready() polls with a deadline. NCCL then connects the two
// ranks lazily, on their first operation, and that set-up waits for the other
// rank's first operation: so both ranks connect() first (rank 0 sends a token,
// rank 1 receives it), each from its own thread or process, or with
// start_connect() on both before finish_connect() on either.
//
// After that a send or receive is enqueued on an explicit CUDA stream (NCCL
// launches the kernels of a non-blocking communicator from a thread of its
// own, where cudaStreamPerThread would name another stream, so the per-thread
// and legacy default streams are refused) and returns once it is on that
// stream; it completes on the device when the other rank has posted the
// matching receive or send (NCCL matches them in order per direction). A
// peer that dies leaves its partner's queued operations waiting for ever, so
// callers bound every wait (an event polled with a deadline) and abort() the
// pair on expiry: NCCL then stops the kernels and the pair is unusable (make
// a new one).
//
// NCCL cannot put both ranks of a communicator on one GPU: the two processes
// must use different devices.
//
// Like cuda_ipc.h, this header includes no CUDA or NCCL header: streams are
// void* (cudaStream_t).
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "tandem/common/status.h"

namespace tandem::transport {

// OK when NCCL can be used by this process: built with NCCL's header and
// libnccl.so.2 loads with every symbol used here. UNIMPLEMENTED for a build
// without NCCL's header; UNAVAILABLE with the loader's message otherwise.
// Loads once; thread-safe.
Status nccl_available();
// "2.28.9", or the reason it is not available.
std::string nccl_version();

// A new NCCL unique id (128 opaque bytes) for one communicator: made by one
// side and handed to the other out of band (here: the DataPlane RPC).
Result<std::string> nccl_unique_id();

class NcclPair {
 public:
  // Starts joining the two-rank communicator named by `unique_id` as `rank`
  // (0 or 1) on the calling thread's current device, without waiting for the
  // other rank. INVALID_ARGUMENT for a malformed id or rank.
  static Result<std::unique_ptr<NcclPair>> join(const std::string& unique_id, int rank);
  // Aborts if not finalised cleanly: never blocks on a dead peer.
  ~NcclPair();
  NcclPair(const NcclPair&) = delete;
  NcclPair& operator=(const NcclPair&) = delete;

  // Waits until both ranks have joined (OK), NCCL reported an error
  // (UNAVAILABLE with NCCL's message), or `timeout` passed (DEADLINE_EXCEEDED).
  // Cheap once ready.
  Status ready(std::chrono::milliseconds timeout);
  // Posts this rank's connection token on `stream` (after ready()), without
  // waiting for the other rank. `stream` must outlive the pair.
  Status start_connect(void* stream);
  // Waits (bounded) until the connection is up: the other rank has posted its
  // token too. Then is_ready() is true.
  Status finish_connect(std::chrono::milliseconds timeout);
  // ready(), start_connect(), finish_connect() in one.
  Status connect(void* stream, std::chrono::milliseconds timeout);
  bool is_ready() const;  // joined and connected, not aborted

  // Enqueued on `stream` (an explicit cudaStream_t of this rank's device):
  // `bytes` from this rank's device memory to the other rank, or into
  // `device_dst` from it. FAILED_PRECONDITION before connect() or after
  // abort(); INVALID_ARGUMENT for a null, per-thread or legacy stream.
  Status send(const void* device_src, size_t bytes, void* stream);
  Status recv(void* device_dst, size_t bytes, void* stream);

  // NCCL's asynchronous error state: OK, or UNAVAILABLE with its message.
  Status check();
  // Stops every queued operation of this communicator (they complete without
  // moving data) and frees it. Idempotent.
  void abort();

 private:
  NcclPair() = default;
  Status transfer(bool send, void* buf, size_t bytes, void* stream);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tandem::transport
