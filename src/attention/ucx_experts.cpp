#include "ucx_experts.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "tandem/common/logging.h"
#include "tandem/internal/v1/node.grpc.pb.h"
#include "tandem/transport/moe_payload.h"

namespace tandem::attention {

namespace pb = tandem::internal::v1;
using transport::MoePayloadLayout;
using namespace std::chrono_literals;

struct UcxExpertExecutor::Link : ExpertLink {};

UcxExpertExecutor::UcxExpertExecutor(const api::DeploymentConfig& cfg, const model::ModelConfig& model, int rank)
    : cfg_(cfg), model_(model), rank_(rank) {}

UcxExpertExecutor::~UcxExpertExecutor() = default;

Result<std::unique_ptr<UcxExpertExecutor>> UcxExpertExecutor::create(const api::DeploymentConfig& cfg,
                                                                     const model::ModelConfig& model, int rank) {
  std::unique_ptr<UcxExpertExecutor> x(new UcxExpertExecutor(cfg, model, rank));
  x->links_ = make_expert_links<Link>(cfg, model.moe.num_experts);
  TANDEM_ASSIGN_OR_RETURN(x->transport_, open_data_plane(cfg, rank, x->links_));
  return x;
}

Status UcxExpertExecutor::connected(Link& link) {
  if (transport_->peer_status(link.id).is_ok()) return Status::ok();
  // A dead expert node is seen at once (its gRPC port refuses); a live one
  // on a loaded machine (two clusters sharing two cores in CI) has taken over
  // half a second to finish the UCX handshake, so the budget is the
  // transport's own timeout (default 5 s) capped at 5 s.
  const auto budget = std::chrono::milliseconds(std::min(cfg_.transport_timeout_ms, 5000));
  return dial(*transport_, link, pb::DataPlaneRequest{}, "ucx", budget).status();
}

Status UcxExpertExecutor::dispatch(int64_t layer, int mb, const float* moe_in, int64_t n, const int32_t* topk_idx,
                                   const float* topk_w, float* out) {
  const int64_t K = model_.moe.top_k, H = model_.hidden_size;
  // Every expert node must be up, not only those this micro-batch needs: a
  // sequence's next token may need any of them, and a degraded cluster should
  // fail fast and visibly rather than by luck of the routing.
  for (auto& link : links_) TANDEM_RETURN_IF_ERROR(connected(*link));
  auto& entry = pending_[{layer, mb}];
  entry.first = out;
  entry.second.clear();
  const uint64_t step = next_step_++;
  for (size_t li = 0; li < links_.size(); ++li) {
    Link& link = *links_[li];
    Outgoing o{li, step, engine::rows_routed_to(topk_idx, n, K, link.first, link.last)};
    if (o.rows.empty()) continue;  // no token of this micro-batch goes there
    const MoePayloadLayout lay{o.rows.size(), static_cast<size_t>(H), static_cast<size_t>(K)};
    // The slot's previous message is normally long delivered (its combine
    // came back); after an aborted step it may still be in flight.
    transport::SendSlot* slot = &slots_[{li, mb}];
    TANDEM_RETURN_IF_ERROR(
        slot->ready(*transport_, lay.dispatch_bytes(), std::chrono::milliseconds(cfg_.transport_timeout_ms)));
    std::byte* p = slot->buffer.data();
    auto* ids = reinterpret_cast<int32_t*>(p + lay.ids_offset());
    auto* weights = reinterpret_cast<float*>(p + lay.weights_offset());
    for (size_t r = 0; r < o.rows.size(); ++r) {
      const int64_t row = o.rows[r];
      std::memcpy(p + r * H * sizeof(float), moe_in + row * H, H * sizeof(float));
      std::memcpy(ids + r * K, topk_idx + row * K, K * sizeof(int32_t));
      std::memcpy(weights + r * K, topk_w + row * K, K * sizeof(float));
    }
    transport::write_step(slot->buffer.span(), lay.step_offset(), step);
    transport::MessageHeader h;
    h.kind = transport::MessageKind::kDispatch;
    h.layer = static_cast<uint32_t>(layer);
    h.micro_batch = static_cast<uint32_t>(mb);
    h.num_tokens = static_cast<uint32_t>(o.rows.size());
    h.hidden_size = static_cast<uint32_t>(H);
    h.dtype = DType::kF32;
    auto sent = transport_->send(link.id, h, slot->buffer, lay.dispatch_bytes());
    if (!sent.is_ok())
      return sent.status().with_context("dispatch to expert node " + std::to_string(link.rank));
    slot->last = *sent;
    entry.second.push_back(std::move(o));
  }
  return Status::ok();
}

Status UcxExpertExecutor::wait(int64_t layer, int mb) {
  auto it = pending_.find({layer, mb});
  if (it == pending_.end()) return Status::ok();
  float* out = it->second.first;
  std::vector<Outgoing> sent = std::move(it->second.second);
  pending_.erase(it);
  const int64_t H = model_.hidden_size;
  const auto timeout = std::chrono::milliseconds(cfg_.transport_timeout_ms);
  for (const Outgoing& o : sent) {
    Link& link = *links_[o.link];
    const MoePayloadLayout lay{o.rows.size(), static_cast<size_t>(H), 0};
    while (true) {
      TANDEM_ASSIGN_OR_RETURN(auto msg, recv_combine(*transport_, link, layer, mb, timeout));
      const auto& hdr = msg.header();
      const auto data = msg.data();
      if (data.size() < sizeof(uint64_t)) return data_loss(link.who() + ": combine of " + std::to_string(data.size()) + " bytes");
      const uint64_t echoed = transport::read_step(data, data.size() - sizeof(uint64_t));
      if (echoed < o.step) continue;  // the late answer to a dispatch of an aborted step
      if (echoed != o.step || hdr.num_tokens != o.rows.size() || hdr.hidden_size != H ||
          hdr.dtype != DType::kF32 || data.size() != lay.combine_bytes())
        return data_loss(link.who() + ": combine (layer " + std::to_string(hdr.layer) + ", micro-batch " +
                         std::to_string(hdr.micro_batch) + ", step " + std::to_string(echoed) + ", " +
                         std::to_string(hdr.num_tokens) + " tokens, " + std::to_string(data.size()) +
                         " bytes) does not answer the dispatch (step " + std::to_string(o.step) + ", " +
                         std::to_string(o.rows.size()) + " tokens, " + std::to_string(lay.combine_bytes()) +
                         " bytes)");
      // The receive pool is page-aligned, so the rows are read in place.
      const auto* y = reinterpret_cast<const float*>(data.data());
      for (size_t i = 0; i < o.rows.size(); ++i) {
        float* dst = out + static_cast<int64_t>(o.rows[i]) * H;
        const float* src = y + i * H;
        for (int64_t j = 0; j < H; ++j) dst[j] += src[j];
      }
      break;
    }
  }
  return Status::ok();
}

}  // namespace tandem::attention
