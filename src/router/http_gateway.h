// The OpenAI-compatible HTTP API of the router (router.http_listen):
// POST /v1/completions, POST /v1/chat/completions (JSON, or server-sent
// events with "stream": true), GET /v1/models and GET /health.
//
// It is a real gRPC client of the router's own tandem.v1 endpoint, so every
// HTTP request takes the path a gRPC request takes (validation, tokenization,
// admission, stop strings, cancellation when the client goes away); this
// layer only translates (openai.h) and carries the stream.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "tandem/api/deployment.h"
#include "tandem/common/status.h"

namespace grpc {
class Channel;
}

namespace tandem::router {

class ApiKeys;

// Metadata the gateway adds to its calls: a token only this process knows
// (the router's, given at start), which says the call is the gateway's and
// its client's key was checked; and the HTTP client's address, read only
// next to that token.
inline constexpr std::string_view kGatewayToken = "x-tandem-gateway";
inline constexpr std::string_view kForwardedFor = "x-tandem-http-client";

class HttpGateway {
 public:
  // Binds router.http_listen (UNAVAILABLE naming it when it cannot; HTTPS
  // with router.tls_*) and serves on threads of its own until stop() or
  // destruction. `metrics`, when set, answers GET /metrics (Prometheus text).
  // `router`: the channel to the router's gRPC service (the router's own
  // in-process one, on which the router takes the gateway's word that the
  // client's key was checked); null: router.listen dialled in plaintext, for
  // tests without keys. `keys`: the router's (replaced on reload); null:
  // router.api_keys as the configuration gives them.
  static Result<std::unique_ptr<HttpGateway>> start(const api::DeploymentConfig& config,
                                                    std::function<std::string()> metrics = {},
                                                    std::shared_ptr<grpc::Channel> router = nullptr,
                                                    std::shared_ptr<ApiKeys> keys = nullptr, std::string token = {});
  virtual ~HttpGateway() = default;
  virtual void stop() = 0;
};

}  // namespace tandem::router
