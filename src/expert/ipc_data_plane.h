// The expert side of the same-host GPU data plane (transport.backend:
// cuda_ipc): per attention node, a receiver whose slot per micro-batch the
// attention node writes activations into, and a sender into that node's
// receiver for the sums. Control messages (routing, sequence numbers) come and
// go over the node's UCX transport; this class does the GPU part of a dispatch.
// See src/attention/ipc_experts.h for the attention side and the protocol.
#pragma once

#if TANDEM_HAVE_CUDA

#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>

#include "device_data_plane.h"
#include "tandem/api/deployment.h"
#include "tandem/engine/cuda_runner.h"
#include "tandem/transport/cuda_ipc.h"

namespace tandem::expert {

class IpcDataPlane : public DeviceDataPlane {
 public:
  // `gpu` holds this node's experts on device `ordinal`; it and `model`
  // outlive this.
  IpcDataPlane(const api::DeploymentConfig& cfg, const model::ModelConfig& model, int ordinal,
               engine::CudaModelRunner& gpu);
  ~IpcDataPlane() override;

  // Maps the attention node's receiver (request.ipc_handle; a new one
  // replaces the old after a restart) and replies with the handle of the
  // receiver this node keeps for it.
  Status attach(const internal::v1::DataPlaneRequest& request, internal::v1::DataPlaneReply& reply) override;

  // Waits on the GPU for the activations in the slot, runs this node's
  // experts and sends the sum into the attention node's slot. GPU work is
  // serialised.
  Status serve(int attention_rank, const transport::MessageHeader& header, std::span<const std::byte> control,
               std::span<std::byte> combine) override;

  size_t slot_bytes() const { return slot_bytes_; }

 private:
  struct Peer {
    std::unique_ptr<transport::CudaIpcReceiver> rx;  // the attention node writes activations here
    std::unique_ptr<transport::CudaIpcSender> tx;    // our sums go into its receiver
    std::string tx_blob;
  };
  Status on_device();  // the calling thread's current device := ordinal_

  const api::DeploymentConfig cfg_;
  const model::ModelConfig& model_;
  const int ordinal_;
  engine::CudaModelRunner& gpu_;
  const size_t slot_bytes_;
  std::mutex mu_;  // peers_, and every GPU call (one runner, one set of scratch buffers)
  std::map<int, Peer> peers_;
};

}  // namespace tandem::expert

#endif  // TANDEM_HAVE_CUDA
