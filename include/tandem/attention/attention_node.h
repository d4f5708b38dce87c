// An attention node: holds the paged KV cache, runs embedding, attention, the
// router gate, the LM head and sampling for the sequences the router hands it,
// with continuous batching (engine::Scheduler) on its own thread. Sequences
// arrive over the internal gRPC control plane (tandem.internal.v1.AttentionNode).
#pragma once

#include <memory>

#include "tandem/api/deployment.h"
#include "tandem/common/status.h"

namespace tandem::attention {

class AttentionNode {
 public:
  virtual ~AttentionNode() = default;
  // Loads the model, binds the node's port (from the deployment) and starts serving.
  static Result<std::unique_ptr<AttentionNode>> start(const api::DeploymentConfig& config, int rank);
  // Stops accepting work, ends running sequences, returns when the server is down.
  virtual void shutdown() = 0;
  // Blocks until shutdown() completes.
  virtual void wait() = 0;
};

}  // namespace tandem::attention
