// The router's API keys (router.api_keys, router.api_keys_file): what a
// client must present on the public APIs, HTTP `Authorization: Bearer KEY`
// or gRPC metadata `authorization: Bearer KEY`. Health and metrics stay open
// (load balancers and Prometheus); the internal node services are not
// public and take no key.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace tandem::router {

// Thread-safe: replace() swaps the keys (a reload) while calls check them.
class ApiKeys {
 public:
  explicit ApiKeys(std::vector<std::string> keys)
      : keys_(std::make_shared<const std::vector<std::string>>(std::move(keys))) {}
  bool required() const { return !current()->empty(); }
  void replace(std::vector<std::string> keys) {
    auto next = std::make_shared<const std::vector<std::string>>(std::move(keys));
    std::lock_guard<std::mutex> lock(mu_);
    keys_ = std::move(next);
  }
  // Whether an Authorization value ("Bearer KEY"; the scheme's case is
  // free) carries an accepted key. True for anything when none is required.
  // Compares every key in full, whatever matched, so that the time taken
  // does not tell how much of a guess was right.
  bool allows(std::string_view authorization) const;

  static constexpr std::string_view kRefusal =
      "missing or wrong API key: send it as `Authorization: Bearer <key>` (gRPC metadata `authorization`)";

 private:
  std::shared_ptr<const std::vector<std::string>> current() const {
    std::lock_guard<std::mutex> lock(mu_);
    return keys_;
  }
  mutable std::mutex mu_;
  std::shared_ptr<const std::vector<std::string>> keys_;
};

}  // namespace tandem::router
