// What the attention side's UCX-based data planes (ucx, cuda_ipc, nccl) share:
// one link per expert node (its control-plane stub and expert range), the
// DataPlane handshake that (re)dials a node's UCX address, receiving a combine
// with errors that name the node, and the control messages of the
// device-resident planes (cuda_ipc, nccl: activations move GPU to GPU, the
// routing and sequence numbers over UCX; transport::IpcControlLayout).
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "tandem/api/deployment.h"
#include "tandem/internal/v1/node.grpc.pb.h"
#include "tandem/transport/transport.h"

namespace tandem::attention {

struct ExpertLink {
  virtual ~ExpertLink() = default;  // links derived per backend are owned through base pointers
  int rank = 0;
  transport::NodeId id;
  std::string control_address;  // the node's gRPC endpoint
  int64_t first = 0, last = 0;  // experts [first, last)
  std::unique_ptr<internal::v1::ExpertNode::Stub> stub;

  std::string who() const { return "expert node " + std::to_string(rank) + " at " + control_address; }
};

// Fills `link` for expert node `rank` of `cfg`.
void init_expert_link(ExpertLink& link, const api::DeploymentConfig& cfg, int64_t num_experts, int rank);

// One LinkT (an ExpertLink or a type derived from it) per expert node of `cfg`.
template <typename LinkT>
std::vector<std::unique_ptr<LinkT>> make_expert_links(const api::DeploymentConfig& cfg, int64_t num_experts) {
  std::vector<std::unique_ptr<LinkT>> links;
  for (int j = 0; j < cfg.expert_nodes; ++j) {
    auto link = std::make_unique<LinkT>();
    init_expert_link(*link, cfg, num_experts, j);
    links.push_back(std::move(link));
  }
  return links;
}

// The attention node's UCX transport, expecting every link's node as a peer.
template <typename LinkT>
Result<std::unique_ptr<transport::Transport>> open_data_plane(const api::DeploymentConfig& cfg, int rank,
                                                              const std::vector<std::unique_ptr<LinkT>>& links);

// Asks the node's control plane for its data plane (`request` carries what the
// backend needs), checks that it serves `backend` with the expected experts,
// and (re)dials its UCX address. Short waits: while a node is down every step
// fails, and the scheduler thread must stay responsive meanwhile.
Result<internal::v1::DataPlaneReply> dial(transport::Transport& t, const ExpertLink& link,
                                          const internal::v1::DataPlaneRequest& request, const std::string& backend,
                                          std::chrono::milliseconds budget);

// The next message of (layer, micro-batch) from the link's node, with
// transport errors turned into statuses that name the node.
Result<transport::Message> recv_combine(transport::Transport& t, const ExpertLink& link, int64_t layer, int mb,
                                        std::chrono::milliseconds timeout);

// Device-resident planes: sends the routing of `rows` (indices into this
// micro-batch's [n, top_k] topk_idx / topk_w) with the step and the sequence
// number of the activations moved on the device, from `control` (a registered
// buffer reused once its previous send is done).
Status send_device_dispatch(transport::Transport& t, const ExpertLink& link, transport::SendSlot& control,
                            int64_t layer, int mb, uint64_t step, uint64_t seq, const std::vector<int32_t>& rows,
                            const int32_t* topk_idx, const float* topk_w, int64_t top_k, int64_t hidden,
                            std::chrono::milliseconds timeout);
// Device-resident planes: receives the combine announcing the answer to the
// dispatch (step, seq, tokens), skipping late answers to aborted steps;
// DATA_LOSS for one that answers something else.
Status await_device_combine(transport::Transport& t, const ExpertLink& link, int64_t layer, int mb, uint64_t step,
                            uint64_t seq, int64_t tokens, std::chrono::milliseconds timeout);

// Implementation detail of open_data_plane.
Result<std::unique_ptr<transport::Transport>> open_data_plane(const api::DeploymentConfig& cfg, int rank,
                                                              const std::vector<transport::NodeId>& peers);

template <typename LinkT>
Result<std::unique_ptr<transport::Transport>> open_data_plane(const api::DeploymentConfig& cfg, int rank,
                                                              const std::vector<std::unique_ptr<LinkT>>& links) {
  std::vector<transport::NodeId> peers;
  for (const auto& l : links) peers.push_back(l->id);
  return open_data_plane(cfg, rank, peers);
}

}  // namespace tandem::attention
