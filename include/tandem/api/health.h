// Client side of grpc.health.v1 for tools and tests: is a role up and serving?
#pragma once

#include <chrono>
#include <string>

#include "tandem/common/status.h"

namespace tandem::api {

// OK when the server at `address` reports SERVING; UNAVAILABLE otherwise.
Status check_health(const std::string& address, std::chrono::milliseconds timeout = std::chrono::milliseconds(500));

// Polls until SERVING or `timeout`; DEADLINE_EXCEEDED says what was last seen.
Status wait_until_serving(const std::string& address, std::chrono::milliseconds timeout);

}  // namespace tandem::api
