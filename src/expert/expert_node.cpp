#include "tandem/expert/expert_node.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <atomic>
#include <cstring>
#include <mutex>

#include "tandem/common/logging.h"
#include "tandem/engine/model_runner.h"
#include "tandem/internal/v1/node.grpc.pb.h"
#include "tandem/model/checkpoint.h"
#include "tandem/model/weights.h"

namespace tandem::expert {

namespace pb = tandem::internal::v1;

namespace {

class Node final : public ExpertNode, public pb::ExpertNode::Service {
 public:
  Status init(const api::DeploymentConfig& cfg, int rank) {
    rank_ = rank;
    TANDEM_ASSIGN_OR_RETURN(ck_, model::Checkpoint::open(cfg.model_path));
    TANDEM_RETURN_IF_ERROR(cfg.validate_against_model(ck_.config.moe.num_experts, 0, size_t{64} << 30));
    range_ = cfg.expert_range(ck_.config.moe.num_experts, rank);
    TANDEM_ASSIGN_OR_RETURN(weights_, model::ModelWeights::load(ck_.config, *ck_.weights,
                                                                {.attention_side = false,
                                                                 .expert_begin = range_.first,
                                                                 .expert_end = range_.second}));
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder b;
    const api::Endpoint ep = cfg.expert_endpoint(rank);
    int bound = 0;
    b.AddListeningPort(ep.to_string(), grpc::InsecureServerCredentials(), &bound);
    b.SetMaxReceiveMessageSize(256 << 20);
    b.SetMaxSendMessageSize(256 << 20);
    b.RegisterService(this);
    server_ = b.BuildAndStart();
    if (!server_ || bound == 0) return unavailable("cannot listen on " + ep.to_string());
    server_->GetHealthCheckService()->SetServingStatus(true);
    TANDEM_LOG_INFO("expert[{}] serving experts [{}, {}) on {}", rank, range_.first, range_.second, ep.to_string());
    return Status::ok();
  }

  ~Node() override {
    shutdown();
    wait();
  }
  void shutdown() override {
    if (stopping_.exchange(true)) return;
    if (server_) {
      server_->GetHealthCheckService()->SetServingStatus(false);
      server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    }
  }
  void wait() override {
    if (server_) server_->Wait();
  }

  // One stream per attention node; its batches are answered in order. Each
  // stream has its own runner (scratch buffers), so streams never wait on each other.
  grpc::Status Exchange(grpc::ServerContext* ctx, grpc::ServerReaderWriter<pb::ExpertResult, pb::ExpertBatch>* s) override {
    const auto& c = ck_.config;
    engine::ModelRunner runner(c, *weights_, nullptr);
    pb::ExpertBatch in;
    std::vector<float> x, out;
    while (!stopping_ && s->Read(&in)) {
      Status st = validate(in);
      if (!st.is_ok()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, st.message());
      const int64_t n = in.num_tokens(), H = c.hidden_size;
      x.resize(static_cast<size_t>(n * H));
      std::memcpy(x.data(), in.activations().data(), x.size() * sizeof(float));
      out.assign(static_cast<size_t>(n * H), 0.0f);
      runner.experts(in.layer(), x.data(), n, in.expert_ids().data(), in.weights().data(), out.data());
      pb::ExpertResult r;
      r.set_layer(in.layer());
      r.set_micro_batch(in.micro_batch());
      r.set_sequence(in.sequence());
      r.set_output(out.data(), out.size() * sizeof(float));
      if (!s->Write(r)) break;
    }
    (void)ctx;
    return grpc::Status::OK;
  }

 private:
  // Every field is checked before use: a malformed batch ends the stream with
  // an error naming the field, never a crash or an out-of-bounds read.
  Status validate(const pb::ExpertBatch& b) const {
    const auto& c = ck_.config;
    if (b.version() != 1) return invalid_argument("expert batch: wire version " + std::to_string(b.version()) + " (expected 1)");
    if (b.layer() < 0 || b.layer() >= c.num_layers || !c.layer_is_moe[static_cast<size_t>(b.layer())])
      return invalid_argument("expert batch: layer " + std::to_string(b.layer()) + " is not a MoE layer");
    if (b.hidden() != c.hidden_size || b.top_k() != c.moe.top_k)
      return invalid_argument("expert batch: hidden/top_k " + std::to_string(b.hidden()) + "/" +
                              std::to_string(b.top_k()) + " do not match the model");
    if (b.num_tokens() < 0 || b.num_tokens() > (1 << 20)) return invalid_argument("expert batch: bad num_tokens");
    const size_t n = static_cast<size_t>(b.num_tokens());
    if (b.activations().size() != n * static_cast<size_t>(c.hidden_size) * sizeof(float))
      return invalid_argument("expert batch: activations hold " + std::to_string(b.activations().size()) +
                              " bytes, expected " + std::to_string(n * c.hidden_size * sizeof(float)));
    if (static_cast<size_t>(b.expert_ids_size()) != n * c.moe.top_k ||
        static_cast<size_t>(b.weights_size()) != n * c.moe.top_k)
      return invalid_argument("expert batch: expert_ids/weights must hold num_tokens * top_k entries");
    for (int32_t e : b.expert_ids())
      if (e < 0 || e >= c.moe.num_experts) return invalid_argument("expert batch: expert id " + std::to_string(e) + " out of range");
    return Status::ok();
  }

  int rank_ = 0;
  model::Checkpoint ck_;
  std::pair<int64_t, int64_t> range_;
  std::unique_ptr<model::ModelWeights> weights_;
  std::unique_ptr<grpc::Server> server_;
  std::atomic<bool> stopping_{false};
};

}  // namespace

Result<std::unique_ptr<ExpertNode>> ExpertNode::start(const api::DeploymentConfig& config, int rank) {
  if (rank < 0 || rank >= config.expert_nodes)
    return invalid_argument("--rank " + std::to_string(rank) + " is outside the " +
                            std::to_string(config.expert_nodes) + " expert nodes of " + config.source);
  auto node = std::make_unique<Node>();
  TANDEM_RETURN_IF_ERROR(node->init(config, rank).with_context("expert node " + std::to_string(rank)));
  return std::unique_ptr<ExpertNode>(std::move(node));
}

}  // namespace tandem::expert
