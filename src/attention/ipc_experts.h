// The attention side of the same-host GPU data plane (transport.backend:
// cuda_ipc; attention and expert nodes on GPUs of one host). Per MoE layer and
// micro-batch the routed activations go device to device, written by a kernel
// on this node's stream straight into the expert node's IPC slot for that
// micro-batch; only the routing (expert ids, gate weights) and the slot's
// sequence number go over UCX. The expert node answers the same way: its sum
// lands in this node's IPC slot and a small UCX message says which sequence
// number to wait for; the wait and the accumulation into the residual update
// are enqueued on this node's stream (the host waits once per micro-batch, for
// the timeout check).
//
// Handshake: ExpertNode.DataPlane with this node's rank and receiver handle
// returns the expert node's UCX address and receiver handle; repeated after a
// lost link, so restarted nodes on either side are picked up again.
//
// Each expert node gets only the tokens routed to it: the routing is on the
// host anyway (for the control message), so the row list goes up with one
// small copy, a gather kernel packs those rows for the IPC send, and the
// answer is scattered back onto them.
#pragma once

#if TANDEM_HAVE_CUDA

#include <memory>

#include "device_experts.h"
#include "tandem/transport/cuda_ipc.h"

namespace tandem::attention {

class CudaIpcExpertExecutor : public DeviceExpertExecutor {
 public:
  // On the calling thread's current device (the node's GPU): allocates this
  // node's receive slots, one per micro-batch and expert node.
  static Result<std::unique_ptr<CudaIpcExpertExecutor>> create(const api::DeploymentConfig& cfg,
                                                               const model::ModelConfig& model, int rank);
  ~CudaIpcExpertExecutor() override;

 private:
  struct IpcLink;
  using DeviceExpertExecutor::DeviceExpertExecutor;

  Status connected(size_t link) override;
  Status send_rows(size_t link, size_t slot, const float* moe_in, const std::vector<int32_t>& rows,
                   uint64_t seq) override;
  Status add_answer(size_t link, size_t slot, const Sent& sent, float* out) override;
  Status finish_wait(const Pending& p) override;
};

}  // namespace tandem::attention

#endif  // TANDEM_HAVE_CUDA
