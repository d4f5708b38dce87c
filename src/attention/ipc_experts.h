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

#include <map>
#include <memory>
#include <vector>

#include "expert_links.h"
#include "tandem/engine/expert_executor.h"
#include "tandem/kernels/cuda.h"
#include "tandem/transport/cuda_ipc.h"

namespace tandem::attention {

class CudaIpcExpertExecutor : public engine::ExpertExecutor {
 public:
  // On the calling thread's current device (the node's GPU): allocates this
  // node's receive slots, one per micro-batch and expert node.
  static Result<std::unique_ptr<CudaIpcExpertExecutor>> create(const api::DeploymentConfig& cfg,
                                                               const model::ModelConfig& model, int rank);
  ~CudaIpcExpertExecutor() override;

  bool device_resident() const override { return true; }
  Status dispatch(int64_t layer, int mb, const float* moe_in, int64_t n, const int32_t* topk_idx,
                  const float* topk_w, float* out) override;
  Status wait(int64_t layer, int mb) override;
  void abort() override { pending_.clear(); }

 private:
  struct Link;
  struct Sent {
    size_t link;
    uint64_t seq;   // of the dispatch, echoed by the answer
    int64_t rows;   // tokens sent (the link's row list for this micro-batch is on the device)
  };
  struct Pending {
    float* out = nullptr;  // device [n, hidden]
    uint64_t step = 0;
    std::vector<Sent> sent;
  };

  CudaIpcExpertExecutor(const api::DeploymentConfig& cfg, const model::ModelConfig& model, int rank);
  Status connected(Link& link);

  const api::DeploymentConfig cfg_;
  const model::ModelConfig& model_;
  int rank_;
  size_t slot_bytes_ = 0;  // one micro-batch of FP32 activations at most
  std::unique_ptr<transport::Transport> transport_;
  std::vector<std::unique_ptr<Link>> links_;
  std::map<std::pair<int64_t, int>, Pending> pending_;
  uint64_t next_step_ = 1;
  // Weight 1 for every row: an expert node's sum is added through the scatter kernel.
  kernels::cuda::DeviceBuffer unit_weights_;
};

}  // namespace tandem::attention

#endif  // TANDEM_HAVE_CUDA
