// M2N transport over UCX (ucp active messages, client-server connections).
//
// One ucp context + worker per transport, driven by a dedicated progress
// thread that sleeps on the worker's event fd when idle. Endpoints use
// UCP_ERR_HANDLING_MODE_PEER so a dead peer is reported, which on Debian's UCX
// 1.13 restricts same-host traffic to tcp (see docs: shm lacks peer failure
// handling); set ucx_config {"NET_DEVICES", "lo"} for loopback-only tests.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tandem/transport/transport.h"

namespace tandem::transport {

struct UcxOptions {
  NodeId self;
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 0;  // 0: ephemeral, see Transport::address()
  // Overrides of UCX_* settings, without the prefix: {"TLS", "tcp"}. The
  // environment applies first.
  std::vector<std::pair<std::string, std::string>> ucx_config;
  // The progress thread polls this long after its last event before sleeping
  // on the event fd: lower latency for a core's worth of CPU. On 2 shared
  // cores it made every number worse (benchmarks/transport_bench), hence 0.
  std::chrono::microseconds busy_poll{0};
};

// Options for a cluster node listening on `host`: UCX's tcp transport (all
// that Debian's UCX 1.13 uses between processes once peer failure handling is
// on) and, for a loopback host, the loopback device only. `shared_memory` adds
// UCX's shared-memory transports with their error handling switched on, so
// eager messages between processes of one host skip the socket (rendezvous
// and connection set-up stay on tcp). UCX_TLS / UCX_NET_DEVICES in the
// environment take precedence.
UcxOptions ucx_node_options(NodeId self, const std::string& host, bool shared_memory = false);

// Starts listening; UNAVAILABLE if UCX cannot start or bind.
Result<std::unique_ptr<Transport>> create_ucx_transport(const UcxOptions& options);

// Whether this process's UCX can move CUDA device memory itself (a UCP context
// created from the environment's UCX_* settings lists UCS_MEMORY_TYPE_CUDA
// among its memory types, i.e. UCX was built with CUDA and its cuda_copy /
// cuda_ipc transports loaded). When `reason` is given it receives a sentence
// saying why, with the UCX version and the memory types found (Debian's UCX
// 1.13 is built without CUDA, so there GPU buffers must be staged through
// host memory or moved by the CUDA IPC channel, tandem/transport/cuda_ipc.h).
// An error only when no UCP context can be created at all.
Result<bool> ucx_supports_cuda_memory(std::string* reason = nullptr);

}  // namespace tandem::transport
