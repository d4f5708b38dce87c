// The router: the public gRPC endpoint (tandem.v1.Generation plus
// grpc.health.v1.Health). It validates and tokenizes requests, admits them
// through a bounded queue, hands each to the least-loaded healthy attention
// node, and streams detokenized text back with stop strings applied.
#pragma once

#include <memory>

#include "tandem/api/deployment.h"
#include "tandem/common/status.h"

namespace tandem::router {

class Router {
 public:
  virtual ~Router() = default;
  static Result<std::unique_ptr<Router>> start(const api::DeploymentConfig& config);
  virtual void shutdown() = 0;
  virtual void wait() = 0;
  // SIGHUP: read router.api_keys_file again (the keys in force stay on an
  // error, which is returned) and reopen router.access_log (logrotate).
  virtual Status reload() = 0;
};

}  // namespace tandem::router
