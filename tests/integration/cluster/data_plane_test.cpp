// Garbage on the UCX data plane of a running cluster: an impostor that dials an
// expert node as attention node 1 and sends malformed dispatches. The expert
// node must refuse each (no answer, no crash), answer a well-formed one, and
// the real cluster must serve again once the impostor is gone.
#include <gtest/gtest.h>

#include <cstring>
#include <future>
#include <thread>

#include "cluster_harness.h"
#include "tandem/model/checkpoint.h"
#include "tandem/transport/moe_payload.h"
#include "tandem/transport/ucx_transport.h"

namespace tandem {
namespace {

using namespace std::chrono_literals;
using testing::Cluster;
using testing::cluster_model;
using testing::generate;
using testing::greedy;
namespace tr = transport;

struct Dispatch {
  tr::MessageHeader header;
  tr::Buffer buffer;
  size_t bytes = 0;
};

// A well-formed dispatch of `tokens` tokens for layer 0 with step id `step`.
Dispatch well_formed(tr::Transport& t, const model::ModelConfig& c, size_t tokens, uint64_t step) {
  const tr::MoePayloadLayout lay{tokens, static_cast<size_t>(c.hidden_size), static_cast<size_t>(c.moe.top_k)};
  Dispatch d;
  d.bytes = lay.dispatch_bytes();
  auto b = t.allocate(d.bytes);
  EXPECT_TRUE(b.is_ok());
  d.buffer = std::move(b).value();
  std::memset(d.buffer.data(), 0, d.bytes);
  auto* x = reinterpret_cast<float*>(d.buffer.data());
  for (size_t i = 0; i < lay.tokens * lay.hidden; ++i) x[i] = 0.01f * static_cast<float>(i % 17);
  auto* ids = reinterpret_cast<int32_t*>(d.buffer.data() + lay.ids_offset());
  auto* w = reinterpret_cast<float*>(d.buffer.data() + lay.weights_offset());
  for (size_t i = 0; i < lay.tokens * lay.top_k; ++i) {
    ids[i] = static_cast<int32_t>(i % lay.top_k);
    w[i] = 1.0f / static_cast<float>(lay.top_k);
  }
  tr::write_step(d.buffer.span(), lay.step_offset(), step);
  d.header.kind = tr::MessageKind::kDispatch;
  d.header.layer = 0;
  d.header.num_tokens = static_cast<uint32_t>(tokens);
  d.header.hidden_size = static_cast<uint32_t>(c.hidden_size);
  d.header.dtype = DType::kF32;
  return d;
}

TEST(ClusterDataPlane, GarbageIsRefusedAndServingContinues) {
  const std::string& dir = cluster_model("tiny-mixtral");
  auto ck = model::Checkpoint::open(dir);
  ASSERT_TRUE(ck.is_ok());
  const model::ModelConfig& c = ck->config;
  Cluster cluster(dir, {.attention_nodes = 2, .expert_nodes = 1, .micro_batches = 1, .transport = "ucx"});
  ASSERT_TRUE(cluster.ready().is_ok()) << cluster.ready().to_string();

  auto control = internal::v1::ExpertNode::NewStub(
      grpc::CreateChannel(cluster.expert_address(0), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  internal::v1::DataPlaneReply where;
  const grpc::Status asked = control->DataPlane(&ctx, {}, &where);
  ASSERT_TRUE(asked.ok()) << asked.error_message();
  ASSERT_EQ(where.backend(), "ucx");
  ASSERT_GT(where.port(), 0u);
  EXPECT_EQ(where.first_expert(), 0);
  EXPECT_EQ(where.last_expert(), c.moe.num_experts);
  const tr::PeerAddress expert{tr::expert_node(0), where.host(), static_cast<uint16_t>(where.port())};

  {
    auto made = tr::create_ucx_transport(tr::ucx_node_options(tr::attention_node(1), "127.0.0.1"));
    ASSERT_TRUE(made.is_ok()) << made.status().to_string();
    auto& impostor = **made;
    ASSERT_TRUE(impostor.expect(std::vector<tr::NodeId>{tr::expert_node(0)}).is_ok());
    ASSERT_TRUE(impostor.reconnect(expert, 5s).is_ok());
    const auto answer = [&](uint32_t layer) {
      return impostor.recv(tr::TagFilter::exact(layer, 0, tr::expert_node(0)), 1500ms);
    };

    // A payload too short for its token count: refused, never answered.
    Dispatch d = well_formed(impostor, c, 2, 1);
    ASSERT_TRUE(impostor.send(expert.id, d.header, d.buffer, d.bytes - 4).is_ok());
    EXPECT_EQ(answer(0).status().code(), StatusCode::kDeadlineExceeded);

    // Expert ids out of range.
    d = well_formed(impostor, c, 2, 2);
    reinterpret_cast<int32_t*>(d.buffer.data() + tr::MoePayloadLayout{2, static_cast<size_t>(c.hidden_size),
                                                                      static_cast<size_t>(c.moe.top_k)}
                                                      .ids_offset())[1] = 1000;
    ASSERT_TRUE(impostor.send(expert.id, d.header, d.buffer, d.bytes).is_ok());
    EXPECT_EQ(answer(0).status().code(), StatusCode::kDeadlineExceeded);

    // A layer the model does not have.
    d = well_formed(impostor, c, 2, 3);
    d.header.layer = 999;
    ASSERT_TRUE(impostor.send(expert.id, d.header, d.buffer, d.bytes).is_ok());
    EXPECT_EQ(answer(999).status().code(), StatusCode::kDeadlineExceeded);

    // A well-formed one is still answered, with its step id echoed.
    d = well_formed(impostor, c, 3, 41);
    ASSERT_TRUE(impostor.send(expert.id, d.header, d.buffer, d.bytes).is_ok());
    auto reply = answer(0);
    ASSERT_TRUE(reply.is_ok()) << reply.status().to_string();
    const tr::MoePayloadLayout lay{3, static_cast<size_t>(c.hidden_size), 0};
    ASSERT_EQ(reply->data().size(), lay.combine_bytes());
    EXPECT_EQ(reply->header().num_tokens, 3u);
    EXPECT_EQ(tr::read_step(reply->data(), lay.step_offset()), 41u);

    // A header that is not one (bad magic and checksum): the expert node stops
    // trusting this connection, but stays up for everyone else.
    std::vector<std::byte> junk(tr::kWireHeaderBytes, std::byte{0x5a});
    ASSERT_TRUE(impostor.send_raw(expert.id, junk, d.buffer, 16).is_ok());
    std::this_thread::sleep_for(300ms);
  }

  // The impostor is gone; the real attention node 1 lost its connection to it
  // and dials again on its next step. Requests land on both attention nodes.
  bool served = false;
  for (int i = 0; i < 20 && !served; ++i) {
    served = generate(cluster.stub(), greedy("after the garbage", 4)).status.ok();
    if (!served) std::this_thread::sleep_for(200ms);
  }
  ASSERT_TRUE(served);
  std::vector<std::future<testing::Reply>> futs;
  for (int i = 0; i < 8; ++i)
    futs.push_back(std::async(std::launch::async,
                              [&, i] { return generate(cluster.stub(), greedy("again " + std::to_string(i), 6)); }));
  for (auto& f : futs) {
    auto r = f.get();
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  }
}

}  // namespace
}  // namespace tandem
