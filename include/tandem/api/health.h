// Client side of grpc.health.v1 for tools and tests: is a role up and serving?
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "tandem/api/channel.h"
#include "tandem/common/status.h"

namespace tandem::api {

// OK when the server at `address` reports SERVING; UNAVAILABLE otherwise.
Status check_health(const std::string& address, std::chrono::milliseconds timeout = std::chrono::milliseconds(500),
                    const ClientTls& tls = {});

// Repeated checks of one server over one kept channel (a monitor's): OK when
// SERVING; DEADLINE_EXCEEDED when no answer came in time (the server may only
// be slow); UNAVAILABLE otherwise (refused, NOT_SERVING).
class HealthProbe {
 public:
  explicit HealthProbe(const std::string& address);
  ~HealthProbe();
  Status check(std::chrono::milliseconds timeout);
  const std::string& address() const { return address_; }

 private:
  struct Impl;
  std::string address_;
  std::unique_ptr<Impl> impl_;
};

// Polls until SERVING or `timeout`; DEADLINE_EXCEEDED says what was last seen.
Status wait_until_serving(const std::string& address, std::chrono::milliseconds timeout, const ClientTls& tls = {});

}  // namespace tandem::api
