#include "tandem/expert/expert_node.h"

#include "tandem/expert/expert_batcher.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "tandem/common/grpc_status.h"
#include "tandem/common/logging.h"
#include "tandem/engine/model_runner.h"
#if TANDEM_HAVE_CUDA
#include "ipc_data_plane.h"
#include "nccl_data_plane.h"
#include "tandem/engine/cuda_runner.h"
#include "tandem/kernels/cuda.h"
#endif
#include "tandem/internal/v1/node.grpc.pb.h"
#include "tandem/model/checkpoint.h"
#include "tandem/model/weights.h"
#include "tandem/transport/moe_payload.h"
#include "tandem/transport/ucx_transport.h"

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
    if (cfg.experts_on() == "cuda") {
      TANDEM_RETURN_IF_ERROR(start_gpu(cfg));
    } else {
      batcher_ = std::make_unique<ExpertBatcher>(ck_.config, *weights_);
    }
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
    // gRPC's health service says SERVING from the start: not before the data plane is up.
    server_->GetHealthCheckService()->SetServingStatus(false);
    if (cfg.transport != "tcp") TANDEM_RETURN_IF_ERROR(start_data_plane(cfg, ep.host));
    data_plane_ready_.store(true, std::memory_order_release);
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
    for (auto& t : senders_)
      if (t.joinable()) t.join();
  }

  grpc::Status DataPlane(grpc::ServerContext*, const pb::DataPlaneRequest* req, pb::DataPlaneReply* reply) override {
    if (!data_plane_ready_.load(std::memory_order_acquire))
      return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          "expert node " + std::to_string(rank_) + " is still setting up its data plane");
    reply->set_first_expert(range_.first);
    reply->set_last_expert(range_.second);
    reply->set_device(device_);
    if (batcher_) {
      const ExpertBatcher::Stats st = batcher_->stats();
      reply->set_requests(st.requests);
      reply->set_passes(st.launches);
      reply->set_busy_s(st.busy_s);
      for (int64_t e = range_.first; e < range_.second && static_cast<size_t>(e) < st.expert_tokens.size(); ++e)
        reply->add_expert_tokens(st.expert_tokens[static_cast<size_t>(e)]);
    }
    if (!transport_) {
      reply->set_backend("tcp");
      return grpc::Status::OK;
    }
    const transport::PeerAddress a = transport_->address();
    reply->set_backend(backend_);
#if TANDEM_HAVE_CUDA
    // An attention node asking for its device channel; a bare request (tandem
    // status) only wants the fields above.
    if (device_plane_ && (!req->ipc_handle().empty() || req->nccl())) {
      if (req->attention_rank() < 0 || req->attention_rank() >= attention_nodes_)
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "attention_rank " + std::to_string(req->attention_rank()) + " is not a node of this cluster");
      if (Status st = device_plane_->attach(*req, *reply); !st.is_ok()) return to_grpc(st);
    }
#else
    (void)req;
#endif
    reply->set_host(a.host);
    reply->set_port(a.port);
    return grpc::Status::OK;
  }

  // One stream per attention node; its batches are answered in order. The
  // experts of all streams run on the batcher, merged where they meet.
  grpc::Status Exchange(grpc::ServerContext* ctx, grpc::ServerReaderWriter<pb::ExpertResult, pb::ExpertBatch>* s) override {
    const auto& c = ck_.config;
    pb::ExpertBatch in;
    std::vector<float> x, out;
    while (!stopping_ && s->Read(&in)) {
      Status st = validate(in);
      if (!st.is_ok()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, st.message());
      const int64_t n = in.num_tokens(), H = c.hidden_size;
      x.resize(static_cast<size_t>(n * H));
      std::memcpy(x.data(), in.activations().data(), x.size() * sizeof(float));
      out.resize(static_cast<size_t>(n * H));
      if (Status ran = batcher_->run(in.layer(), x.data(), n, in.expert_ids().data(), in.weights().data(), out.data());
          !ran.is_ok())
        return grpc::Status(grpc::StatusCode::INTERNAL, "expert node " + std::to_string(rank_) + ": " + ran.message());
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
  // Replies wait at most this long for the previous send of their buffer.
  static constexpr std::chrono::milliseconds kReplyReuse{5000};

  // The GPU flavour: this node's experts on a GPU, fed by the batcher's
  // thread (the merged work of every attention node) through pinned staging.
  Status start_gpu(const api::DeploymentConfig& cfg) {
#if TANDEM_HAVE_CUDA
    TANDEM_ASSIGN_OR_RETURN(const int ordinal, engine::use_cuda_device(cfg.expert_gpu_slot(rank_)));
    gpu_ordinal_ = ordinal;
    TANDEM_ASSIGN_OR_RETURN(const engine::ExpertGemm gemm, engine::parse_expert_gemm(cfg.expert_gemm));
    const engine::CudaRunnerOptions options{.dtype = cfg.gpu_dtype(), .experts = gemm};
    TANDEM_ASSIGN_OR_RETURN(gpu_, engine::CudaModelRunner::create_expert_side(ck_.config, *weights_, options));
    TANDEM_LOG_INFO("expert[{}] on GPU {} ({} MiB of expert weights)", rank_, ordinal, gpu_->device_bytes() >> 20);
    TANDEM_ASSIGN_OR_RETURN(const kernels::cuda::DeviceInfo info, kernels::cuda::device_info());
    device_ = "cuda:" + std::to_string(ordinal) + " " + info.name;
    batcher_ = std::make_unique<ExpertBatcher>(
        ck_.config, [this, ordinal, selected = false](int64_t layer, const float* x, int64_t n, const int32_t* ids,
                                                      const float* w, float* out) mutable -> Status {
          if (!selected) {  // the batcher's thread makes the CUDA calls
            TANDEM_RETURN_IF_ERROR(kernels::cuda::set_device(ordinal));
            selected = true;
          }
          return gpu_->experts(layer, x, n, ids, w, out);
        });
    return Status::ok();
#else
    return unimplemented(cfg.source + ": expert.device: cuda, but this tandem was built without CUDA");
#endif
  }

  // The UCX data plane: an ephemeral listener (its address is handed out by
  // DataPlane) and one thread per attention node, so a slow or restarting
  // sender never delays another.
  Status start_data_plane(const api::DeploymentConfig& cfg, const std::string& host) {
    backend_ = cfg.transport;
    attention_nodes_ = cfg.attention_nodes;
#if TANDEM_HAVE_CUDA
    if (cfg.transport == "cuda_ipc" || cfg.transport == "nccl") {
      if (!gpu_)
        return failed_precondition(cfg.source + ": transport.backend: " + cfg.transport + " needs expert.device: cuda");
      if (cfg.transport == "cuda_ipc") {
        device_plane_ = std::make_unique<IpcDataPlane>(cfg, ck_.config, gpu_ordinal_, *gpu_);
      } else {
        TANDEM_ASSIGN_OR_RETURN(device_plane_, NcclDataPlane::create(cfg, ck_.config, gpu_ordinal_, *gpu_));
      }
    }
#endif
    const auto self = transport::expert_node(static_cast<uint32_t>(rank_));
    TANDEM_ASSIGN_OR_RETURN(transport_, transport::create_ucx_transport(
                                              transport::ucx_node_options(self, host, cfg.transport_shared_memory)));
    std::vector<transport::NodeId> peers;
    for (int i = 0; i < cfg.attention_nodes; ++i) peers.push_back(transport::attention_node(static_cast<uint32_t>(i)));
    TANDEM_RETURN_IF_ERROR(transport_->expect(peers));
    for (const auto& peer : peers) senders_.emplace_back([this, peer] { serve_sender(peer); });
    TANDEM_LOG_INFO("expert[{}] data plane on {}", rank_, transport::to_string(transport_->address()));
    return Status::ok();
  }

  void serve_sender(transport::NodeId peer) {
    using namespace std::chrono_literals;
    const auto& c = ck_.config;
    // Two reply buffers: one is computed into while the other may still be sending.
    std::array<transport::SendSlot, 2> replies;
    size_t turn = 0;
    while (!stopping_) {
      auto msg = transport_->recv(transport::TagFilter{std::nullopt, std::nullopt, peer}, 200ms);
      if (!msg.is_ok()) {
        // Not connected (yet, or any more): the attention node dials again
        // when it is back. Anything else is a timeout: look at stopping_.
        if (msg.status().code() != StatusCode::kDeadlineExceeded) std::this_thread::sleep_for(20ms);
        continue;
      }
      const transport::MessageHeader& h = msg->header();
#if TANDEM_HAVE_CUDA
      if (device_plane_) {
        serve_device(peer, h, msg->data(), replies[turn++ % replies.size()]);
        continue;
      }
#endif
      const transport::MoePayloadLayout lay{h.num_tokens, static_cast<size_t>(c.hidden_size),
                                            static_cast<size_t>(c.moe.top_k)};
      if (Status st = validate(h, lay, msg->data()); !st.is_ok()) {
        // Unanswered, the dispatch times out on the attention node, which names us.
        TANDEM_LOG_ERROR("expert[{}]: dropping a dispatch from {}: {}", rank_, transport::to_string(peer),
                         st.message());
        continue;
      }
      auto& slot = replies[turn++ % replies.size()];
      if (Status st = slot.ready(*transport_, lay.combine_bytes(), kReplyReuse); !st.is_ok()) {
        TANDEM_LOG_ERROR("expert[{}]: {}", rank_, st.message());
        continue;
      }
      const std::byte* in = msg->data().data();
      auto* y = reinterpret_cast<float*>(slot.buffer.data());
      if (Status ran = batcher_->run(h.layer, reinterpret_cast<const float*>(in), static_cast<int64_t>(lay.tokens),
                                     reinterpret_cast<const int32_t*>(in + lay.ids_offset()),
                                     reinterpret_cast<const float*>(in + lay.weights_offset()), y);
          !ran.is_ok()) {
        // Unanswered, the dispatch times out on the attention node, which names us.
        TANDEM_LOG_ERROR("expert[{}]: layer {} from {} failed: {}", rank_, h.layer, transport::to_string(peer),
                         ran.message());
        continue;
      }
      transport::write_step(slot.buffer.span(), lay.step_offset(), transport::read_step(msg->data(), lay.step_offset()));
      transport::MessageHeader r;
      r.kind = transport::MessageKind::kCombine;
      r.layer = h.layer;
      r.micro_batch = h.micro_batch;
      r.num_tokens = h.num_tokens;
      r.hidden_size = h.hidden_size;
      r.dtype = DType::kF32;
      auto sent = transport_->send(peer, r, slot.buffer, lay.combine_bytes());
      if (sent.is_ok()) slot.last = *sent;  // a failed send: the sender is gone, and will redo the step
    }
  }

#if TANDEM_HAVE_CUDA
  // A cuda_ipc or nccl dispatch: the control message carries the routing and
  // the sequence number of activations sent device to device; the answer goes
  // the same way, announced by a small combine message.
  void serve_device(transport::NodeId peer, const transport::MessageHeader& h, std::span<const std::byte> control,
                 transport::SendSlot& slot) {
    const auto& c = ck_.config;
    const int attention_rank = static_cast<int>(peer.rank);
    Status st = h.kind != transport::MessageKind::kDispatch ? invalid_argument("not a dispatch message")
                : h.layer >= static_cast<uint32_t>(c.num_layers) || !c.layer_is_moe[h.layer]
                    ? invalid_argument("layer " + std::to_string(h.layer) + " is not a MoE layer")
                    : Status::ok();
    if (st.is_ok()) st = slot.ready(*transport_, transport::IpcControlLayout::kCombineBytes, kReplyReuse);
    const bool serve_failed_before_plane = !st.is_ok();
    if (st.is_ok())
      st = device_plane_->serve(attention_rank, h, control,
                                slot.buffer.span().first(transport::IpcControlLayout::kCombineBytes));
    if (!st.is_ok()) {
      // Unanswered, the dispatch times out on the attention node, which names us.
      if (serve_failed_before_plane) device_plane_->dropped(attention_rank);
      TANDEM_LOG_ERROR("expert[{}]: dropping a device dispatch from {}: {}", rank_, transport::to_string(peer),
                       st.message());
      return;
    }
    transport::MessageHeader r;
    r.kind = transport::MessageKind::kCombine;
    r.layer = h.layer;
    r.micro_batch = h.micro_batch;
    r.num_tokens = 0;
    r.hidden_size = h.hidden_size;
    r.dtype = DType::kF32;
    auto sent = transport_->send(peer, r, slot.buffer, transport::IpcControlLayout::kCombineBytes);
    if (sent.is_ok()) slot.last = *sent;
  }
#endif

  // A dispatch is read in place, so every field that sizes or indexes
  // something is checked first.
  Status validate(const transport::MessageHeader& h, const transport::MoePayloadLayout& lay,
                  std::span<const std::byte> data) const {
    const auto& c = ck_.config;
    if (h.kind != transport::MessageKind::kDispatch) return invalid_argument("not a dispatch message");
    if (h.layer >= static_cast<uint32_t>(c.num_layers) || !c.layer_is_moe[h.layer])
      return invalid_argument("layer " + std::to_string(h.layer) + " is not a MoE layer");
    if (h.dtype != DType::kF32 || h.hidden_size != static_cast<uint32_t>(c.hidden_size))
      return invalid_argument("activations must be F32 with hidden size " + std::to_string(c.hidden_size));
    if (data.size() != lay.dispatch_bytes())
      return invalid_argument("payload of " + std::to_string(data.size()) + " bytes, " +
                              std::to_string(lay.dispatch_bytes()) + " expected for " + std::to_string(lay.tokens) +
                              " tokens");
    const auto* ids = reinterpret_cast<const int32_t*>(data.data() + lay.ids_offset());
    for (size_t i = 0; i < lay.tokens * lay.top_k; ++i)
      if (ids[i] < 0 || ids[i] >= c.moe.num_experts)
        return invalid_argument("expert id " + std::to_string(ids[i]) + " out of range");
    return Status::ok();
  }

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
  std::string device_ = "cpu";
  std::string backend_ = "tcp";
  int attention_nodes_ = 0;
  int gpu_ordinal_ = 0;
  model::Checkpoint ck_;
  std::pair<int64_t, int64_t> range_;
  std::unique_ptr<model::ModelWeights> weights_;
#if TANDEM_HAVE_CUDA
  std::unique_ptr<engine::CudaModelRunner> gpu_;
#endif
  std::unique_ptr<ExpertBatcher> batcher_;  // after weights_ and gpu_: stops before they go
  std::unique_ptr<grpc::Server> server_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> data_plane_ready_{false};  // DataPlane answers once init has set up what it reads
  std::unique_ptr<transport::Transport> transport_;  // ucx, cuda_ipc and nccl
#if TANDEM_HAVE_CUDA
  std::unique_ptr<DeviceDataPlane> device_plane_;  // cuda_ipc and nccl
#endif
  std::vector<std::thread> senders_;
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
