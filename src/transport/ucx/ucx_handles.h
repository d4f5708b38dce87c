// Move-only owners of UCX handles, so every exit path releases them.
#pragma once

#include <ucp/api/ucp.h>

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../memory.h"
#include "tandem/common/status.h"

namespace tandem::transport::ucx {

// UNAVAILABLE for everything but caller mistakes and memory exhaustion: from
// the caller's point of view a UCX failure means the peer or fabric is gone.
Status ucx_error(ucs_status_t status, std::string_view what);

class Context {
 public:
  // `config`: UCX_* overrides without the prefix, applied over the environment.
  static Result<std::shared_ptr<Context>> create(const std::vector<std::pair<std::string, std::string>>& config);
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  ~Context() { ucp_cleanup(h_); }
  ucp_context_h get() const { return h_; }

 private:
  explicit Context(ucp_context_h h) : h_(h) {}
  ucp_context_h h_;
};

// ucp_mem_map over a context that every region keeps alive.
class Registrar final : public detail::MemoryRegistrar {
 public:
  explicit Registrar(std::shared_ptr<Context> context) : context_(std::move(context)) {}
  Result<void*> register_memory(void* data, size_t bytes) override;
  void unregister_memory(void* handle) override;

 private:
  std::shared_ptr<Context> context_;
};

template <typename H, void (*Destroy)(H)>
class UniqueHandle {
 public:
  UniqueHandle() = default;
  explicit UniqueHandle(H h) : h_(h) {}
  UniqueHandle(UniqueHandle&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  UniqueHandle& operator=(UniqueHandle&& o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, nullptr);
    }
    return *this;
  }
  ~UniqueHandle() { reset(); }
  H get() const { return h_; }
  explicit operator bool() const { return h_ != nullptr; }
  void reset() {
    if (h_) Destroy(std::exchange(h_, nullptr));
  }

 private:
  H h_ = nullptr;
};

using Worker = UniqueHandle<ucp_worker_h, ucp_worker_destroy>;
using Listener = UniqueHandle<ucp_listener_h, ucp_listener_destroy>;

// An endpoint. Closing needs worker progress, so the owner normally calls
// close() and progresses the returned request; the destructor only covers
// forgotten endpoints (forced close, request released unprogressed).
class Endpoint {
 public:
  Endpoint() = default;
  explicit Endpoint(ucp_ep_h ep) : ep_(ep) {}
  Endpoint(Endpoint&& o) noexcept : ep_(std::exchange(o.ep_, nullptr)) {}
  Endpoint& operator=(Endpoint&& o) noexcept;
  ~Endpoint();
  ucp_ep_h get() const { return ep_; }
  // Starts closing and gives up ownership; returns the request to progress, or
  // nullptr when done. `force`: drop outstanding operations (peer is dead).
  void* close(bool force);

 private:
  ucp_ep_h ep_ = nullptr;
};

}  // namespace tandem::transport::ucx
