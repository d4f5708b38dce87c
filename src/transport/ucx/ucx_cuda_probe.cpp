// ucx_supports_cuda_memory: asks a fresh UCP context which memory types it can
// move (UCP_ATTR_FIELD_MEMORY_TYPES).
#include <ucp/api/ucp.h>

#include <string>

#include "tandem/transport/ucx_transport.h"
#include "ucx_handles.h"

namespace tandem::transport {
namespace {

const char* memory_type_name(int t) {
  switch (t) {
    case UCS_MEMORY_TYPE_HOST: return "host";
    case UCS_MEMORY_TYPE_CUDA: return "cuda";
    case UCS_MEMORY_TYPE_CUDA_MANAGED: return "cuda-managed";
    case UCS_MEMORY_TYPE_ROCM: return "rocm";
    case UCS_MEMORY_TYPE_ROCM_MANAGED: return "rocm-managed";
    default: return "other";
  }
}

}  // namespace

Result<bool> ucx_supports_cuda_memory(std::string* reason) {
  TANDEM_ASSIGN_OR_RETURN(std::shared_ptr<ucx::Context> context, ucx::Context::create({}));
  ucp_context_attr_t attr{};
  attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  if (ucs_status_t st = ucp_context_query(context->get(), &attr); st != UCS_OK) {
    return ucx::ucx_error(st, "ucp_context_query(memory types)");
  }
  std::string types;
  for (int t = 0; t < UCS_MEMORY_TYPE_LAST; ++t) {
    if (!(attr.memory_types & (uint64_t{1} << t))) continue;
    if (!types.empty()) types += ", ";
    types += memory_type_name(t);
  }
  if (types.empty()) types = "none";
  const bool cuda = (attr.memory_types & (uint64_t{1} << UCS_MEMORY_TYPE_CUDA)) != 0;
  if (reason) {
    const std::string version = std::string("UCX ") + ucp_get_version_string();
    if (cuda) {
      *reason = version + " supports CUDA device memory (memory types: " + types + ")";
    } else {
      *reason = version + " lacks CUDA support: it was built without CUDA or its cuda transports are not loaded "
                "(memory types: " + types + "; see `ucx_info -d` for cuda_copy/cuda_ipc), so GPU buffers "
                "cannot be handed to it directly";
    }
  }
  return cuda;
}

}  // namespace tandem::transport
