#include "tandem/transport/inproc_transport.h"

#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "transport_test_util.h"

namespace tandem::transport {
namespace {

using namespace testing;

struct Cluster {
  std::shared_ptr<InprocFabric> fabric = create_inproc_fabric();
  std::vector<std::unique_ptr<Transport>> attention, experts;

  Cluster(uint32_t m, uint32_t n) {
    for (uint32_t i = 0; i < m; ++i) attention.push_back(take(create_inproc_transport(fabric, attention_node(i))));
    for (uint32_t i = 0; i < n; ++i) experts.push_back(take(create_inproc_transport(fabric, expert_node(i))));
  }
  std::vector<Transport*> all() {
    std::vector<Transport*> v;
    for (auto& t : attention) v.push_back(t.get());
    for (auto& t : experts) v.push_back(t.get());
    return v;
  }
  std::vector<NodeId> ids(const std::vector<std::unique_ptr<Transport>>& ts) {
    std::vector<NodeId> v;
    for (auto& t : ts) v.push_back(t->self());
    return v;
  }
};

TEST(InprocTransport, MeshTwoByThreeInThreads) {
  Cluster c(2, 3);
  ASSERT_TRUE(connect_all(c.all(), 5s).is_ok());
  Exchange x;
  x.layers = 6;
  x.micro_batches = 3;
  std::vector<std::future<Status>> runs;
  for (auto& a : c.attention) {
    runs.push_back(std::async(std::launch::async, [&, t = a.get()] { return run_attention(*t, c.ids(c.experts), x); }));
  }
  for (auto& e : c.experts) {
    runs.push_back(std::async(std::launch::async, [&, t = e.get()] { return run_expert(*t, c.ids(c.attention), x); }));
  }
  for (auto& r : runs) EXPECT_TRUE(r.get().is_ok());
}

TEST(InprocTransport, DuplicateNodeIsRejected) {
  auto fabric = create_inproc_fabric();
  auto a = create_inproc_transport(fabric, attention_node(0));
  ASSERT_TRUE(a.is_ok());
  EXPECT_EQ(create_inproc_transport(fabric, attention_node(0)).status().code(), StatusCode::kInvalidArgument);
}

TEST(InprocTransport, ConnectTimesOutNamingMissingPeer) {
  auto fabric = create_inproc_fabric();
  auto a = take(create_inproc_transport(fabric, attention_node(0)));
  std::vector<PeerAddress> peers = {{expert_node(4), "inproc", 0}};
  Status st = a->connect(peers, 50ms);
  EXPECT_EQ(st.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(st.message().find("expert[4]"), std::string::npos) << st.message();
}

TEST(InprocTransport, KilledPeerFailsWaitingReceiveAndLaterSends) {
  Cluster c(1, 2);
  ASSERT_TRUE(connect_all(c.all(), 5s).is_ok());
  Transport& a = *c.attention[0];
  auto waiting = std::async(std::launch::async, [&] {
    return a.recv(TagFilter::exact(0, 0, expert_node(1)), 10s).status();
  });
  std::this_thread::sleep_for(50ms);
  const auto t0 = std::chrono::steady_clock::now();
  c.fabric->kill(expert_node(1));
  Status st = waiting.get();
  EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.to_string();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
  std::vector<Buffer> keep;
  EXPECT_EQ(send_pattern(a, expert_node(1), MessageKind::kDispatch, 0, 0, 10, keep).status().code(),
            StatusCode::kUnavailable);
  // The killed node behaves as dead too, and the other expert still works.
  EXPECT_EQ(c.experts[1]->recv(TagFilter::any(), 10ms).status().code(), StatusCode::kUnavailable);
  auto h = send_pattern(a, expert_node(0), MessageKind::kDispatch, 0, 0, 10, keep);
  ASSERT_TRUE(h.is_ok());
  EXPECT_TRUE(recv_pattern(*c.experts[0], attention_node(0), MessageKind::kDispatch, 0, 0, 10, 1s).is_ok());
}

TEST(InprocTransport, DestroyedPeerIsUnavailable) {
  Cluster c(1, 1);
  ASSERT_TRUE(connect_all(c.all(), 5s).is_ok());
  c.experts.clear();
  Status st = c.attention[0]->recv(TagFilter::exact(0, 0, expert_node(0)), 5s).status();
  EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.to_string();
}

TEST(InprocTransport, CorruptHeaderIsDataLossForThatSenderOnly) {
  Cluster c(2, 1);
  ASSERT_TRUE(connect_all(c.all(), 5s).is_ok());
  Transport& bad = *c.attention[0];
  auto buf = take(bad.allocate(64));
  MessageHeader h;
  h.layer = 1;
  h.sender = bad.self();
  h.payload_bytes = 64;
  auto wire = *encode_header(h);
  wire[17] ^= std::byte{0x10};
  ASSERT_TRUE(bad.send_raw(expert_node(0), wire, buf, 64).is_ok());
  Status st = c.experts[0]->recv(TagFilter::exact(1, 0, bad.self()), 1s).status();
  EXPECT_EQ(st.code(), StatusCode::kDataLoss) << st.to_string();

  std::vector<Buffer> keep;
  ASSERT_TRUE(send_pattern(*c.attention[1], expert_node(0), MessageKind::kDispatch, 1, 0, 64, keep).is_ok());
  EXPECT_TRUE(recv_pattern(*c.experts[0], attention_node(1), MessageKind::kDispatch, 1, 0, 64, 1s).is_ok());
}

TEST(InprocTransport, ReceiveTimeoutIsDeadlineExceededNamingPeerAndTag) {
  Cluster c(1, 1);
  ASSERT_TRUE(connect_all(c.all(), 5s).is_ok());
  Status st = c.experts[0]->recv(TagFilter::exact(7, 2, attention_node(0)), 20ms).status();
  EXPECT_EQ(st.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(st.message().find("layer=7 micro_batch=2 from attention[0]"), std::string::npos) << st.message();
}

TEST(InprocTransport, RejectsBadSends) {
  Cluster c(1, 1);
  Transport& a = *c.attention[0];
  auto buf = take(a.allocate(16));
  MessageHeader h;
  EXPECT_EQ(a.send(expert_node(0), h, buf, 16).status().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(connect_all(c.all(), 5s).is_ok());
  EXPECT_EQ(a.send(expert_node(9), h, buf, 16).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(a.send(expert_node(0), h, buf, 17).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(a.send(expert_node(0), h, buf, 8, 9).status().code(), StatusCode::kInvalidArgument);
  auto foreign = take(c.experts[0]->allocate(16));
  EXPECT_EQ(a.send(expert_node(0), h, foreign, 16).status().code(), StatusCode::kInvalidArgument);
  h.num_tokens = 4;
  h.hidden_size = 4;
  h.dtype = DType::kF32;  // 64 bytes of activations in a 16-byte payload
  EXPECT_EQ(a.send(expert_node(0), h, buf, 16).status().code(), StatusCode::kInvalidArgument);
  h = {};
  h.kind = MessageKind::kHello;
  EXPECT_EQ(a.send(expert_node(0), h, buf, 0).status().code(), StatusCode::kInvalidArgument);
}

TEST(InprocTransport, WildcardReceivesOldestFirstAndOffsetsWork) {
  Cluster c(1, 1);
  ASSERT_TRUE(connect_all(c.all(), 5s).is_ok());
  Transport& a = *c.attention[0];
  auto buf = take(a.allocate(300));
  for (int i = 0; i < 300; ++i) buf.data()[i] = std::byte(i);
  MessageHeader h;
  for (uint32_t layer = 0; layer < 3; ++layer) {
    h.layer = layer;
    ASSERT_TRUE(a.send(expert_node(0), h, buf, 100, 100 * layer).is_ok());
  }
  for (uint32_t layer = 0; layer < 3; ++layer) {
    auto m = c.experts[0]->recv(TagFilter::any(), 1s);
    ASSERT_TRUE(m.is_ok());
    EXPECT_EQ(m->header().layer, layer);
    EXPECT_EQ(m->header().sequence, layer);
    EXPECT_EQ(m->data()[0], std::byte(100 * layer));
  }
}

}  // namespace
}  // namespace tandem::transport
