#include "api_keys.h"

#include <cctype>

namespace tandem::router {
namespace {

bool same(std::string_view a, std::string_view b) {
  // Every byte of the key is read whatever the guess, and a length mismatch
  // does not return early.
  unsigned diff = a.size() == b.size() ? 0u : 1u;
  for (size_t i = 0; i < b.size(); ++i)
    diff |= static_cast<unsigned char>(i < a.size() ? a[i] : 0) ^ static_cast<unsigned char>(b[i]);
  return diff == 0;
}

}  // namespace

bool ApiKeys::allows(std::string_view authorization) const {
  const auto keys = current();
  if (keys->empty()) return true;
  constexpr std::string_view kScheme = "bearer ";
  if (authorization.size() <= kScheme.size()) return false;
  for (size_t i = 0; i < kScheme.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(authorization[i])) != kScheme[i]) return false;
  std::string_view key = authorization.substr(kScheme.size());
  while (!key.empty() && (key.front() == ' ' || key.front() == '\t')) key.remove_prefix(1);
  while (!key.empty() && (key.back() == ' ' || key.back() == '\t')) key.remove_suffix(1);
  bool ok = false;
  for (const std::string& k : *keys) ok |= same(key, k);
  return ok;
}

}  // namespace tandem::router
