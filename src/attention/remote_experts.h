// The attention side of the expert-parallel data plane over gRPC streams: per
// MoE layer and micro-batch, sends each expert node the tokens routed to its
// experts and later adds their weighted outputs into the residual update. A
// reader thread per expert node drains results as they come, so the send of the
// next micro-batch never waits behind an unread result.
#pragma once

#include <map>
#include <memory>
#include <vector>

#include "tandem/api/deployment.h"
#include "tandem/engine/expert_executor.h"
#include "tandem/model/config.h"

namespace tandem::attention {

class RemoteExpertExecutor : public engine::ExpertExecutor {
 public:
  RemoteExpertExecutor(const api::DeploymentConfig& cfg, const model::ModelConfig& model, int rank);
  ~RemoteExpertExecutor() override;

  Status dispatch(int64_t layer, int mb, const float* moe_in, int64_t n, const int32_t* topk_idx,
                  const float* topk_w, float* out) override;
  Status wait(int64_t layer, int mb) override;
  // Drops outstanding dispatches and reopens every stream on next use.
  void abort() override;

 private:
  struct Link;
  struct Pending {
    size_t link;
    uint64_t sequence;
    std::vector<int32_t> rows;  // batch rows sent, in order
  };
  Status connected(Link& link);

  const api::DeploymentConfig cfg_;
  const model::ModelConfig& model_;
  int rank_;
  std::vector<std::unique_ptr<Link>> links_;
  std::map<std::pair<int64_t, int>, std::pair<float*, std::vector<Pending>>> pending_;
};

}  // namespace tandem::attention
