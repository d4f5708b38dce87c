// The attention side of the expert-parallel data plane over the UCX M2N
// transport (transport.backend: ucx). Per MoE layer and micro-batch it packs the
// tokens routed to each expert node into that node's registered send buffer and
// sends them as one dispatch message; wait() receives the combines and adds
// them into the residual update straight from the receive pool.
//
// Expert nodes listen on ephemeral UCX ports, found through their gRPC control
// plane (ExpertNode.DataPlane); a lost link is re-dialed there on the next
// dispatch, so a restarted expert node is picked up again.
#pragma once

#include <map>
#include <memory>
#include <vector>

#include "expert_links.h"
#include "tandem/engine/expert_executor.h"

namespace tandem::attention {

class UcxExpertExecutor : public engine::ExpertExecutor {
 public:
  static Result<std::unique_ptr<UcxExpertExecutor>> create(const api::DeploymentConfig& cfg,
                                                           const model::ModelConfig& model, int rank);
  ~UcxExpertExecutor() override;

  Status dispatch(int64_t layer, int mb, const float* moe_in, int64_t n, const int32_t* topk_idx,
                  const float* topk_w, float* out) override;
  Status wait(int64_t layer, int mb) override;
  void abort() override { pending_.clear(); }

 private:
  struct Link;
  struct Outgoing {
    size_t link;
    uint64_t step;
    std::vector<int32_t> rows;  // batch rows sent, in order
  };

  UcxExpertExecutor(const api::DeploymentConfig& cfg, const model::ModelConfig& model, int rank);
  // Makes sure the link is up, (re)dialing the node's current data-plane address.
  Status connected(Link& link);

  const api::DeploymentConfig cfg_;
  const model::ModelConfig& model_;
  int rank_;
  std::unique_ptr<transport::Transport> transport_;
  std::vector<std::unique_ptr<Link>> links_;
  std::map<std::pair<size_t, int>, transport::SendSlot> slots_;  // per (link, micro-batch)
  std::map<std::pair<int64_t, int>, std::pair<float*, std::vector<Outgoing>>> pending_;
  uint64_t next_step_ = 1;
};

}  // namespace tandem::attention
