// The expert side of transport.backend: nccl, the comparison backend for
// machines with several GPUs (one per node). Per attention node, two NCCL
// communicators of two ranks each (this node is rank 1 of both): on the first
// the attention node sends the routed activations, on the second this node
// sends their sum back. Routing and sequence numbers come and go over the
// node's UCX transport (transport::IpcControlLayout), as for cuda_ipc. See
// src/attention/nccl_experts.h for the attention side and the ordering that
// keeps the two processes free of deadlock.
#pragma once

#if TANDEM_HAVE_CUDA

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "device_data_plane.h"
#include "tandem/api/deployment.h"
#include "tandem/engine/cuda_runner.h"
#include "tandem/kernels/cuda.h"
#include "tandem/transport/nccl_p2p.h"

namespace tandem::expert {

class NcclDataPlane : public DeviceDataPlane {
 public:
  // `gpu` holds this node's experts on device `ordinal`; it and `model`
  // outlive this. UNAVAILABLE when NCCL cannot be loaded.
  static Result<std::unique_ptr<NcclDataPlane>> create(const api::DeploymentConfig& cfg,
                                                       const model::ModelConfig& model, int ordinal,
                                                       engine::CudaModelRunner& gpu);
  ~NcclDataPlane() override;

  // request.nccl: makes two fresh unique ids, joins both communicators as
  // rank 1 and connects them on a thread of their own (NCCL connects on the
  // first operation, which waits for the attention node's), and replies with
  // the ids at once. Replaces what the node had with this attention node;
  // dispatches of steps before request.next_step are dropped from then on.
  Status attach(const internal::v1::DataPlaneRequest& request, internal::v1::DataPlaneReply& reply) override;

  // Receives the activations, runs the experts, sends the sum back, and
  // waits (bounded) for that send: its combine message must not announce a
  // sum that is not on its way. Any failure drops the attention node's
  // communicators (it sets up new ones when it dials again), so no transfer
  // is ever matched with the wrong dispatch.
  Status serve(int attention_rank, const transport::MessageHeader& header, std::span<const std::byte> control,
               std::span<std::byte> combine) override;
  void dropped(int attention_rank) override;

 private:
  struct Peer;
  NcclDataPlane(const api::DeploymentConfig& cfg, const model::ModelConfig& model, int ordinal,
                engine::CudaModelRunner& gpu);
  Status serve_locked(Peer& p, const transport::MessageHeader& h, const DeviceDispatch& d);

  const api::DeploymentConfig cfg_;
  const model::ModelConfig& model_;
  const int ordinal_;
  engine::CudaModelRunner& gpu_;
  const size_t max_tokens_;
  std::mutex mu_;  // peers_ and every GPU call (one runner, one activation buffer)
  std::map<int, std::unique_ptr<Peer>> peers_;
  kernels::cuda::Stream stream_;  // receives, experts, sends: NCCL needs an explicit stream
  kernels::cuda::DeviceBuffer activations_;  // [max_tokens, hidden] FP32
  kernels::cuda::Event sent_;
};

}  // namespace tandem::expert

#endif  // TANDEM_HAVE_CUDA
