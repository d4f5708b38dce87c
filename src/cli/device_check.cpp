#include "device_check.h"

#if TANDEM_HAVE_CUDA
#include "tandem/kernels/cuda.h"
#include "tandem/transport/nccl_p2p.h"
#endif

namespace tandem::cli {

namespace {
// The key that put a node on the GPU, as the user wrote it.
std::string cuda_key(const api::DeploymentConfig& cfg, std::string_view role) {
  const bool attention = role != "expert" && cfg.attention_on() == "cuda";
  const std::string& own = attention ? cfg.attention_device : cfg.expert_device;
  return own.empty() ? "cluster.device: cuda" : (attention ? "attention.device: cuda" : "expert.device: cuda");
}
}  // namespace

Status check_device(const api::DeploymentConfig& cfg, std::string_view role) {
  const bool wants_cuda = role == "attention" ? cfg.attention_on() == "cuda"
                          : role == "expert"  ? cfg.experts_on() == "cuda"
                                              : cfg.uses_cuda();
  if (!wants_cuda) return Status::ok();
  const std::string where = cfg.source + ": " + cuda_key(cfg, role);
#if TANDEM_HAVE_CUDA
  auto n = kernels::cuda::device_count();
  if (!n.is_ok())
    return unavailable(where + ", but " + n.status().message() + "; run on a machine with a GPU or set it to cpu");
  if (cfg.transport == "nccl") {
    // Placement first: it is wrong whether or not NCCL is installed.
    TANDEM_RETURN_IF_ERROR(cfg.check_nccl_placement(*n));
    TANDEM_RETURN_IF_ERROR(transport::nccl_available().with_context(cfg.source + ": transport.backend: nccl"));
  }
  return Status::ok();
#else
  return unimplemented(where + ", but this tandem was built without CUDA (nvcc was not found when it was "
                       "configured); rebuild where nvcc is, or set it to cpu");
#endif
}

}  // namespace tandem::cli
