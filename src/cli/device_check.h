// Which compute devices this build can put cluster nodes on.
#pragma once

#include "tandem/api/deployment.h"

namespace tandem::cli {

// UNIMPLEMENTED for a deployment whose nodes want a device they cannot run on
// yet (cluster.device: cuda), rather than quietly running them on the CPU.
Status check_device(const api::DeploymentConfig& cfg);

}  // namespace tandem::cli
