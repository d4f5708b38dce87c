// The attention side of transport.backend: nccl, NCCL point-to-point between
// GPUs (one per node; the comparison backend for machines with several GPUs,
// cuda_ipc being the same-host default). Per expert node two two-rank
// communicators: activations go out on one, the node's sums come back on the
// other; the routing and sequence numbers go over UCX exactly as for cuda_ipc
// (send_device_dispatch / await_device_combine).
//
// Ordering, per link and micro-batch slot: the gather into the slot's send
// buffer runs on this thread's stream; the send runs on the link's send
// stream after it; the receive of the sum is posted at the same time on the
// link's receive stream, so it is waiting before the expert node sends. The
// expert node takes sends and answers in order, so neither process ever
// waits on an operation the other has not yet been able to post: no deadlock
// across the two processes, and this thread's stream never blocks on the
// network (the next micro-batch's attention runs meanwhile). wait() polls the
// receive with the transport timeout, then orders the scatter of the sum
// after it; a link that fails is aborted and set up afresh on the next step.
//
// Handshake: ExpertNode.DataPlane with `nccl` set returns two NCCL unique ids
// the expert node has joined as rank 1; this node joins them as rank 0 and
// waits (bounded) until both communicators are up. Repeated after a loss.
#pragma once

#if TANDEM_HAVE_CUDA

#include <memory>

#include "device_experts.h"
#include "tandem/transport/nccl_p2p.h"

namespace tandem::attention {

class NcclExpertExecutor : public DeviceExpertExecutor {
 public:
  // On the calling thread's current device (the node's GPU). UNAVAILABLE when
  // NCCL cannot be loaded.
  static Result<std::unique_ptr<NcclExpertExecutor>> create(const api::DeploymentConfig& cfg,
                                                           const model::ModelConfig& model, int rank);
  ~NcclExpertExecutor() override;

 private:
  struct NcclLink;
  using DeviceExpertExecutor::DeviceExpertExecutor;

  Status connected(size_t link) override;
  Status send_rows(size_t link, size_t slot, const float* moe_in, const std::vector<int32_t>& rows,
                   uint64_t seq) override;
  Status add_answer(size_t link, size_t slot, const Sent& sent, float* out) override;
  // Aborts the link's communicators (queued operations end) so that the next
  // step sets up new ones.
  void on_link_error(size_t link) override;
};

}  // namespace tandem::attention

#endif  // TANDEM_HAVE_CUDA
