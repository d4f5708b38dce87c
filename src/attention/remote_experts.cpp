#include "remote_experts.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "tandem/common/logging.h"
#include "tandem/internal/v1/node.grpc.pb.h"

namespace tandem::attention {

namespace pb = tandem::internal::v1;

struct RemoteExpertExecutor::Link {
  int rank = 0;
  std::string address;
  int64_t first = 0, last = 0;  // experts [first, last)
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::ExpertNode::Stub> stub;
  std::unique_ptr<grpc::ClientContext> ctx;
  std::unique_ptr<grpc::ClientReaderWriter<pb::ExpertBatch, pb::ExpertResult>> stream;
  std::thread reader;
  uint64_t next_sequence = 0;
  int64_t outstanding = 0;  // results owed on the current stream (dispatch thread only)

  std::mutex mu;
  std::condition_variable cv;
  std::deque<pb::ExpertResult> results;  // guarded by mu
  bool broken = true;                    // guarded by mu
  std::string why = "not connected";     // guarded by mu

  void close() {
    if (ctx) ctx->TryCancel();
    if (reader.joinable()) reader.join();
    if (stream) stream->Finish();
    stream.reset();
    ctx.reset();
  }

  void open() {
    close();
    ctx = std::make_unique<grpc::ClientContext>();
    stream = stub->Exchange(ctx.get());
    {
      std::lock_guard<std::mutex> l(mu);
      results.clear();
      broken = false;
    }
    reader = std::thread([this] {
      pb::ExpertResult r;
      while (stream->Read(&r)) {
        std::lock_guard<std::mutex> l(mu);
        results.push_back(std::move(r));
        cv.notify_all();
      }
      std::lock_guard<std::mutex> l(mu);
      broken = true;
      why = "stream to expert node " + std::to_string(rank) + " at " + address + " ended";
      cv.notify_all();
    });
  }
};

RemoteExpertExecutor::RemoteExpertExecutor(const api::DeploymentConfig& cfg, const model::ModelConfig& model, int rank)
    : cfg_(cfg), model_(model), rank_(rank) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  args.SetMaxSendMessageSize(256 << 20);
  for (int j = 0; j < cfg.expert_nodes; ++j) {
    auto link = std::make_unique<Link>();
    link->rank = j;
    link->address = cfg.expert_endpoint(j).to_string();
    std::tie(link->first, link->last) = cfg.expert_range(model.moe.num_experts, j);
    link->channel = grpc::CreateCustomChannel(link->address, grpc::InsecureChannelCredentials(), args);
    link->stub = pb::ExpertNode::NewStub(link->channel);
    links_.push_back(std::move(link));
  }
}

RemoteExpertExecutor::~RemoteExpertExecutor() {
  for (auto& l : links_) l->close();
}

// (Re)opens the stream of a link whose expert node is reachable.
Status RemoteExpertExecutor::connected(Link& link) {
  {
    std::lock_guard<std::mutex> l(link.mu);
    if (!link.broken) return Status::ok();
    // Results owed on the old stream are lost with it: a new stream now would
    // hand later results to the waits of the lost ones.
    if (link.outstanding > 0)
      return unavailable("expert node " + std::to_string(link.rank) + ": " + link.why);
  }
  // A short connect wait: while a node is down every step fails, and the
  // scheduler thread must stay responsive to cancellations meanwhile.
  const auto deadline =
      std::chrono::system_clock::now() + std::chrono::milliseconds(std::min(cfg_.transport_timeout_ms, 500));
  if (!link.channel->WaitForConnected(deadline))
    return unavailable("expert node " + std::to_string(link.rank) + " at " + link.address + " is unreachable");
  link.open();
  return Status::ok();
}

Status RemoteExpertExecutor::dispatch(int64_t layer, int mb, const float* moe_in, int64_t n, const int32_t* topk_idx,
                                      const float* topk_w, float* out) {
  const int64_t K = model_.moe.top_k, H = model_.hidden_size;
  // Every expert node must be up, not only those this micro-batch needs: a
  // sequence's next token may need any of them, and a degraded cluster should
  // fail fast and visibly rather than by luck of the routing.
  for (auto& link : links_) TANDEM_RETURN_IF_ERROR(connected(*link));
  auto& entry = pending_[{layer, mb}];
  entry.first = out;
  entry.second.clear();
  for (size_t li = 0; li < links_.size(); ++li) {
    Link& link = *links_[li];
    Pending p{li, 0, engine::rows_routed_to(topk_idx, n, K, link.first, link.last)};
    if (p.rows.empty()) continue;  // no token of this micro-batch goes there
    TANDEM_RETURN_IF_ERROR(connected(link));
    pb::ExpertBatch b;
    b.set_version(1);
    b.set_layer(static_cast<int32_t>(layer));
    b.set_micro_batch(mb);
    b.set_sender(rank_);
    b.set_sequence(p.sequence = link.next_sequence++);
    b.set_num_tokens(static_cast<int32_t>(p.rows.size()));
    b.set_hidden(static_cast<int32_t>(H));
    b.set_top_k(static_cast<int32_t>(K));
    std::string* act = b.mutable_activations();
    act->resize(p.rows.size() * static_cast<size_t>(H) * sizeof(float));
    for (size_t r = 0; r < p.rows.size(); ++r) {
      std::memcpy(act->data() + r * H * sizeof(float), moe_in + static_cast<int64_t>(p.rows[r]) * H, H * sizeof(float));
      for (int64_t k = 0; k < K; ++k) {
        b.add_expert_ids(topk_idx[p.rows[r] * K + k]);
        b.add_weights(topk_w[p.rows[r] * K + k]);
      }
    }
    if (!link.stream->Write(b)) {
      std::lock_guard<std::mutex> l(link.mu);
      link.broken = true;
      return unavailable("expert node " + std::to_string(link.rank) + " at " + link.address +
                         " dropped the connection");
    }
    ++link.outstanding;
    entry.second.push_back(std::move(p));
  }
  return Status::ok();
}

void RemoteExpertExecutor::abort() {
  pending_.clear();
  for (auto& link : links_) {
    link->close();
    std::lock_guard<std::mutex> l(link->mu);
    link->results.clear();
    link->broken = true;
    link->outstanding = 0;
  }
}

Status RemoteExpertExecutor::wait(int64_t layer, int mb) {
  auto it = pending_.find({layer, mb});
  if (it == pending_.end()) return Status::ok();
  float* out = it->second.first;
  std::vector<Pending> sent = std::move(it->second.second);
  pending_.erase(it);
  const int64_t H = model_.hidden_size;
  for (const Pending& p : sent) {
    Link& link = *links_[p.link];
    std::unique_lock<std::mutex> l(link.mu);
    const bool ready = link.cv.wait_for(l, std::chrono::milliseconds(cfg_.transport_timeout_ms),
                                        [&] { return !link.results.empty() || link.broken; });
    if (link.results.empty()) {
      if (link.broken) return unavailable("expert node " + std::to_string(link.rank) + ": " + link.why);
      (void)ready;
      return {StatusCode::kDeadlineExceeded, "expert node " + std::to_string(link.rank) + " at " + link.address +
                                                 ": no result for layer " + std::to_string(layer) + " micro-batch " +
                                                 std::to_string(mb) + " within " +
                                                 std::to_string(cfg_.transport_timeout_ms) + " ms"};
    }
    pb::ExpertResult r = std::move(link.results.front());
    link.results.pop_front();
    l.unlock();
    --link.outstanding;
    if (r.sequence() != p.sequence || r.layer() != layer || r.micro_batch() != mb ||
        r.output().size() != p.rows.size() * static_cast<size_t>(H) * sizeof(float))
      return data_loss("expert node " + std::to_string(link.rank) + ": result (layer " + std::to_string(r.layer()) +
                       ", micro-batch " + std::to_string(r.micro_batch()) + ", sequence " +
                       std::to_string(r.sequence()) + ", " + std::to_string(r.output().size()) +
                       " bytes) does not match the request (layer " + std::to_string(layer) + ", micro-batch " +
                       std::to_string(mb) + ", sequence " + std::to_string(p.sequence) + ", " +
                       std::to_string(p.rows.size() * H * sizeof(float)) + " bytes)");
    const float* y = reinterpret_cast<const float*>(r.output().data());
    std::vector<float> row(static_cast<size_t>(H));
    for (size_t i = 0; i < p.rows.size(); ++i) {
      std::memcpy(row.data(), y + i * H, H * sizeof(float));  // the bytes need not be aligned
      float* o = out + static_cast<int64_t>(p.rows[i]) * H;
      for (int64_t j = 0; j < H; ++j) o[j] += row[j];
    }
  }
  return Status::ok();
}

}  // namespace tandem::attention
