#include "device_check.h"

namespace tandem::cli {

Status check_device(const api::DeploymentConfig& cfg) {
  if (cfg.device == "cpu") return Status::ok();
  return unimplemented(cfg.source + ": cluster.device: " + cfg.device +
                       ": attention and expert nodes run on the CPU backend only so far (the CUDA kernels exist, "
                       "the GPU nodes do not yet); set cluster.device: cpu");
}

}  // namespace tandem::cli
