#include "transport_test_util.h"

#include <future>
#include <string>

namespace tandem::transport::testing {

Result<SendHandle> send_pattern(Transport& t, NodeId to, MessageKind kind, uint32_t layer, uint32_t mb, size_t bytes,
                                std::vector<Buffer>& keep) {
  TANDEM_ASSIGN_OR_RETURN(Buffer b, t.allocate(bytes));
  fill_pattern(b.span().first(bytes), message_seed(t.self(), to, layer, mb));
  MessageHeader h;
  h.kind = kind;
  h.layer = layer;
  h.micro_batch = mb;
  h.num_tokens = static_cast<uint32_t>(bytes);
  h.hidden_size = 1;
  h.dtype = DType::kU8;
  auto handle = t.send(to, h, b, bytes);
  keep.push_back(std::move(b));
  return handle;
}

Status recv_pattern(Transport& t, NodeId from, MessageKind kind, uint32_t layer, uint32_t mb, size_t bytes,
                    std::chrono::milliseconds timeout) {
  TANDEM_ASSIGN_OR_RETURN(Message m, t.recv(TagFilter::exact(layer, mb, from), timeout));
  const MessageHeader& h = m.header();
  const std::string what = to_string(t.self()) + " from " + to_string(from) + " layer " + std::to_string(layer) +
                           " mb " + std::to_string(mb);
  if (h.kind != kind || h.sender != from || h.layer != layer || h.micro_batch != mb) {
    return internal_error(what + ": wrong header");
  }
  if (m.data().size() != bytes || h.payload_bytes != bytes || h.num_tokens != bytes) {
    return internal_error(what + ": " + std::to_string(m.data().size()) + " bytes, expected " + std::to_string(bytes));
  }
  if (long at = first_mismatch(m.data(), message_seed(from, t.self(), layer, mb)); at >= 0) {
    return internal_error(what + ": payload differs at byte " + std::to_string(at));
  }
  return Status::ok();
}

Status run_attention(Transport& t, const std::vector<NodeId>& experts, const Exchange& x) {
  std::vector<Buffer> keep;
  std::vector<SendHandle> sends;
  for (uint32_t layer = 0; layer < x.layers; ++layer) {
    for (uint32_t mb = 0; mb < x.micro_batches; ++mb) {
      for (NodeId e : experts) {
        TANDEM_ASSIGN_OR_RETURN(SendHandle h, send_pattern(t, e, MessageKind::kDispatch, layer, mb,
                                                           x.bytes(t.self(), e, layer, mb), keep));
        sends.push_back(h);
      }
    }
  }
  // Newest first: the oldest messages wait in the inbox meanwhile.
  for (uint32_t layer = x.layers; layer-- > 0;) {
    for (uint32_t mb = x.micro_batches; mb-- > 0;) {
      for (NodeId e : experts) {
        TANDEM_RETURN_IF_ERROR(
            recv_pattern(t, e, MessageKind::kCombine, layer, mb, x.bytes(e, t.self(), layer, mb), x.timeout));
      }
    }
  }
  for (const SendHandle& h : sends) TANDEM_RETURN_IF_ERROR(h.wait(x.timeout));
  return Status::ok();
}

Status run_expert(Transport& t, const std::vector<NodeId>& attention, const Exchange& x) {
  std::vector<Buffer> keep;
  std::vector<SendHandle> sends;
  for (uint32_t layer = 0; layer < x.layers; ++layer) {
    for (uint32_t mb = 0; mb < x.micro_batches; ++mb) {
      for (NodeId a : attention) {
        TANDEM_RETURN_IF_ERROR(
            recv_pattern(t, a, MessageKind::kDispatch, layer, mb, x.bytes(a, t.self(), layer, mb), x.timeout));
        TANDEM_ASSIGN_OR_RETURN(SendHandle h, send_pattern(t, a, MessageKind::kCombine, layer, mb,
                                                           x.bytes(t.self(), a, layer, mb), keep));
        sends.push_back(h);
      }
    }
  }
  for (const SendHandle& h : sends) TANDEM_RETURN_IF_ERROR(h.wait(x.timeout));
  return Status::ok();
}

Status connect_all(const std::vector<Transport*>& nodes, std::chrono::milliseconds timeout) {
  std::vector<std::future<Status>> done;
  for (Transport* n : nodes) {
    std::vector<PeerAddress> peers;
    for (Transport* o : nodes) {
      if (o->self().role != n->self().role) peers.push_back(o->address());
    }
    done.push_back(std::async(std::launch::async, [n, peers, timeout] { return n->connect(peers, timeout); }));
  }
  Status first;
  for (auto& d : done) {
    Status s = d.get();
    if (first.is_ok() && !s.is_ok()) first = s;
  }
  return first;
}

}  // namespace tandem::transport::testing
