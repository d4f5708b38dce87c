#include "ucx_handles.h"

#include <string>

namespace tandem::transport::ucx {

Status ucx_error(ucs_status_t status, std::string_view what) {
  std::string m(what);
  m += ": ";
  m += ucs_status_string(status);
  switch (status) {
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_EXCEEDS_LIMIT: return resource_exhausted(std::move(m));
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_UNSUPPORTED: return invalid_argument(std::move(m));
    default: return unavailable(std::move(m));
  }
}

Result<std::shared_ptr<Context>> Context::create(const std::vector<std::pair<std::string, std::string>>& config) {
  ucp_config_t* cfg = nullptr;
  if (ucs_status_t st = ucp_config_read(nullptr, nullptr, &cfg); st != UCS_OK) {
    return ucx_error(st, "ucp_config_read");
  }
  for (const auto& [key, value] : config) {
    if (ucs_status_t st = ucp_config_modify(cfg, key.c_str(), value.c_str()); st != UCS_OK) {
      ucp_config_release(cfg);
      return ucx_error(st, "UCX setting " + key + "=" + value);
    }
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  // Registration (ucp_mem_map) happens on caller threads while the progress
  // thread uses the worker: this makes context-level calls thread-safe.
  params.mt_workers_shared = 1;
  ucp_context_h h = nullptr;
  ucs_status_t st = ucp_init(&params, cfg, &h);
  ucp_config_release(cfg);
  if (st != UCS_OK) return ucx_error(st, "ucp_init");
  return std::shared_ptr<Context>(new Context(h));
}

Result<void*> Registrar::register_memory(void* data, size_t bytes) {
  ucp_mem_map_params_t p{};
  p.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  p.address = data;
  p.length = bytes;
  ucp_mem_h memh = nullptr;
  if (ucs_status_t st = ucp_mem_map(context_->get(), &p, &memh); st != UCS_OK) {
    return ucx_error(st, "ucp_mem_map of " + std::to_string(bytes) + " bytes");
  }
  return static_cast<void*>(memh);
}

void Registrar::unregister_memory(void* handle) {
  if (handle) ucp_mem_unmap(context_->get(), static_cast<ucp_mem_h>(handle));
}

Endpoint& Endpoint::operator=(Endpoint&& o) noexcept {
  if (this != &o) {
    if (void* req = close(true); req) ucp_request_free(req);
    ep_ = std::exchange(o.ep_, nullptr);
  }
  return *this;
}

Endpoint::~Endpoint() {
  if (void* req = close(true); req) ucp_request_free(req);
}

void* Endpoint::close(bool force) {
  if (!ep_) return nullptr;
  ucp_request_param_t p{};
  if (force) {
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = UCP_EP_CLOSE_FLAG_FORCE;
  }
  ucs_status_ptr_t r = ucp_ep_close_nbx(std::exchange(ep_, nullptr), &p);
  return UCS_PTR_IS_PTR(r) ? r : nullptr;
}

}  // namespace tandem::transport::ucx
