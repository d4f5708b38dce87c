// Shared by the transport tests and the peer processes they spawn: options for
// UCX on loopback, deterministic payloads, and the M2N exchange every mesh test
// runs (attention dispatches to every expert, experts combine back).
#pragma once

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tandem/transport/transport.h"
#include "tandem/transport/ucx_transport.h"

namespace tandem::transport::testing {

using namespace std::chrono_literals;

// The value of an OK result (asserting it is OK): Result has no rvalue operator*.
template <typename T>
T take(Result<T> r) {
  if (!r.is_ok()) {
    std::fprintf(stderr, "unexpected error: %s\n", r.status().to_string().c_str());
    std::abort();
  }
  return std::move(r).value();
}

inline UcxOptions loopback_options(NodeId self) {
  UcxOptions o;
  o.self = self;
  o.listen_host = "127.0.0.1";
  o.listen_port = 0;
  // tcp is all UCX 1.13 uses with peer failure handling on one host anyway;
  // lo keeps a rendezvous lane off eth0.
  o.ucx_config = {{"TLS", "tcp"}, {"NET_DEVICES", "lo"}};
  return o;
}

inline uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

inline uint64_t message_seed(NodeId from, NodeId to, uint32_t layer, uint32_t micro_batch) {
  return mix((uint64_t{static_cast<uint8_t>(from.role)} << 56) ^ (uint64_t{from.rank} << 40) ^
             (uint64_t{static_cast<uint8_t>(to.role)} << 32) ^ (uint64_t{to.rank} << 24) ^ (uint64_t{layer} << 8) ^
             micro_batch);
}

inline void fill_pattern(std::span<std::byte> out, uint64_t seed) {
  size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    const uint64_t v = mix(seed + i);
    std::memcpy(out.data() + i, &v, 8);
  }
  if (i < out.size()) {
    const uint64_t tail = mix(seed + i);
    std::memcpy(out.data() + i, &tail, out.size() - i);
  }
}

// Index of the first byte that differs from the pattern, or -1.
inline long first_mismatch(std::span<const std::byte> in, uint64_t seed) {
  std::vector<std::byte> expect(in.size());
  fill_pattern(expect, seed);
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != expect[i]) return static_cast<long>(i);
  }
  return -1;
}

struct Exchange {
  uint32_t layers = 4;
  uint32_t micro_batches = 2;
  std::vector<size_t> sizes = {1, 1000, 65536, 1 << 20};
  std::chrono::milliseconds timeout = 20s;

  // Varies the size over messages so every size meets every pair.
  size_t bytes(NodeId from, NodeId to, uint32_t layer, uint32_t mb) const {
    return sizes[(layer * micro_batches + mb + from.rank + 3 * to.rank) % sizes.size()];
  }
};

// Sends `bytes` of the pattern for (from = t.self(), to, layer, mb). Payload is
// described as [bytes, 1] u8 so the header check covers it exactly.
Result<SendHandle> send_pattern(Transport& t, NodeId to, MessageKind kind, uint32_t layer, uint32_t mb, size_t bytes,
                                std::vector<Buffer>& keep);

// Receives the message for (layer, mb) from `from` and checks header and bytes.
Status recv_pattern(Transport& t, NodeId from, MessageKind kind, uint32_t layer, uint32_t mb, size_t bytes,
                    std::chrono::milliseconds timeout);

// An attention node's part: dispatch every (layer, micro-batch) to every
// expert at once (all in flight), then collect and check every combine.
Status run_attention(Transport& t, const std::vector<NodeId>& experts, const Exchange& x);
// An expert node's part: per (layer, micro-batch) and attention node, receive
// the dispatch, check it, answer with a combine.
Status run_expert(Transport& t, const std::vector<NodeId>& attention, const Exchange& x);

// Connects every transport to all of the other role (the M2N topology) from
// parallel threads: connect() blocks until both sides of each pair are up.
Status connect_all(const std::vector<Transport*>& nodes, std::chrono::milliseconds timeout);

}  // namespace tandem::transport::testing
