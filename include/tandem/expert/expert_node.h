// An expert node: holds a contiguous range of the experts of every MoE layer
// and runs the tokens attention nodes route to them as grouped matrix products.
// Each attention node has its own stream, received on its own thread, so a slow
// sender never delays another (no head-of-line blocking between senders); the
// expert work of all of them meets on one compute thread, which merges what
// is waiting for the same layer into one grouped GEMM.
#pragma once

#include <cstdint>
#include <memory>

#include "tandem/api/deployment.h"
#include "tandem/common/status.h"

namespace tandem::expert {

class ExpertNode {
 public:
  virtual ~ExpertNode() = default;
  static Result<std::unique_ptr<ExpertNode>> start(const api::DeploymentConfig& config, int rank);
  virtual void shutdown() = 0;
  virtual void wait() = 0;
};

}  // namespace tandem::expert
