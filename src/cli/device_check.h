// Which compute devices this build and machine can put cluster nodes on.
#pragma once

#include <string_view>

#include "tandem/api/deployment.h"

namespace tandem::cli {

// For `role` ("serve": every node; "attention"; "expert"): OK when its nodes'
// device can be used here. A GPU node without a usable GPU is UNAVAILABLE
// (with the driver's reason) and in a build without CUDA UNIMPLEMENTED; both
// name the YAML key, rather than running the node on the CPU behind the
// user's back.
// transport.backend: nccl also needs NCCL loadable and each attention node on
// another GPU than each expert node (NCCL cannot put both ranks of a
// communicator on one GPU).
Status check_device(const api::DeploymentConfig& cfg, std::string_view role);

}  // namespace tandem::cli
