// Peers that come and go: expect() on the accepting side, reconnect() on the
// dialing side, a restarted incarnation replacing the old one.
#include <gtest/gtest.h>

#include <thread>

#include "tandem/transport/ucx_transport.h"
#include "transport_test_util.h"

namespace tandem::transport {
namespace {

using namespace testing;
using Clock = std::chrono::steady_clock;

std::unique_ptr<Transport> make(NodeId id, std::vector<NodeId> peers) {
  auto t = create_ucx_transport(loopback_options(id));
  EXPECT_TRUE(t.is_ok()) << t.status().to_string();
  if (!t.is_ok()) return nullptr;
  Status st = (*t)->expect(peers);
  EXPECT_TRUE(st.is_ok()) << st.to_string();
  return std::move(*t);
}

// One dispatch from `a` and its combine back from `e`, checked.
Status round_trip(Transport& a, Transport& e, uint32_t layer) {
  std::vector<Buffer> keep;
  TANDEM_RETURN_IF_ERROR(send_pattern(a, e.self(), MessageKind::kDispatch, layer, 0, 3000, keep).status());
  TANDEM_RETURN_IF_ERROR(recv_pattern(e, a.self(), MessageKind::kDispatch, layer, 0, 3000, 5s));
  TANDEM_RETURN_IF_ERROR(send_pattern(e, a.self(), MessageKind::kCombine, layer, 0, 200000, keep).status());
  return recv_pattern(a, e.self(), MessageKind::kCombine, layer, 0, 200000, 5s);
}

// Polls until `t` sees its link to `peer` fail.
Status wait_until_down(const Transport& t, NodeId peer, std::chrono::milliseconds within) {
  const auto deadline = Clock::now() + within;
  while (Clock::now() < deadline) {
    Status st = t.peer_status(peer);
    if (!st.is_ok()) return st;
    std::this_thread::sleep_for(10ms);
  }
  return Status::ok();
}

TEST(UcxReconnect, AcceptingSideTakesARestartedPeerBack) {
  auto e = make(expert_node(0), {attention_node(0)});
  ASSERT_TRUE(e);
  EXPECT_EQ(e->peer_status(attention_node(0)).code(), StatusCode::kUnavailable);
  for (int incarnation = 0; incarnation < 3; ++incarnation) {
    auto a = make(attention_node(0), {expert_node(0)});
    ASSERT_TRUE(a);
    EXPECT_EQ(a->peer_status(expert_node(0)).code(), StatusCode::kUnavailable);
    ASSERT_TRUE(a->reconnect(e->address(), 10s).is_ok());
    Status st = round_trip(*a, *e, 1);
    ASSERT_TRUE(st.is_ok()) << "incarnation " << incarnation << ": " << st.to_string();
    a.reset();
    // The old incarnation is gone for the expert until the new one dials.
    Status down = wait_until_down(*e, attention_node(0), 5s);
    EXPECT_EQ(down.code(), StatusCode::kUnavailable) << down.to_string();
  }
}

TEST(UcxReconnect, DialingSideReconnectsToARestartedPeerOnItsNewPort) {
  auto a = make(attention_node(1), {expert_node(2)});
  ASSERT_TRUE(a);
  auto e = make(expert_node(2), {attention_node(1)});
  ASSERT_TRUE(e);
  ASSERT_TRUE(a->reconnect(e->address(), 10s).is_ok());
  ASSERT_TRUE(round_trip(*a, *e, 0).is_ok());
  e.reset();
  Status down = wait_until_down(*a, expert_node(2), 5s);
  EXPECT_EQ(down.code(), StatusCode::kUnavailable) << down.to_string();
  std::vector<Buffer> keep;
  EXPECT_EQ(send_pattern(*a, expert_node(2), MessageKind::kDispatch, 0, 0, 10, keep).status().code(),
            StatusCode::kUnavailable);

  e = make(expert_node(2), {attention_node(1)});
  ASSERT_TRUE(e);
  ASSERT_TRUE(a->reconnect(e->address(), 10s).is_ok());
  EXPECT_TRUE(a->peer_status(expert_node(2)).is_ok());
  Status st = round_trip(*a, *e, 3);
  EXPECT_TRUE(st.is_ok()) << st.to_string();
}

TEST(UcxReconnect, ReconnectingAHealthyLinkDropsWhatTheOldConnectionLeftQueued) {
  auto a = make(attention_node(0), {expert_node(0)});
  auto e = make(expert_node(0), {attention_node(0)});
  ASSERT_TRUE(a && e);
  ASSERT_TRUE(a->reconnect(e->address(), 10s).is_ok());
  std::vector<Buffer> keep;
  auto sent = send_pattern(*a, e->self(), MessageKind::kDispatch, 7, 0, 100, keep);
  ASSERT_TRUE(sent.is_ok());
  ASSERT_TRUE(sent->wait(5s).is_ok());
  std::this_thread::sleep_for(300ms);  // delivered into the expert's inbox by now
  ASSERT_TRUE(a->reconnect(e->address(), 10s).is_ok());
  ASSERT_TRUE(round_trip(*a, *e, 8).is_ok());
  // Layer 7 came on the replaced connection: a restarted sender must not have
  // its predecessor's messages answered.
  auto stale = e->recv(TagFilter::exact(7, 0, a->self()), 200ms);
  EXPECT_EQ(stale.status().code(), StatusCode::kDeadlineExceeded) << stale.status().to_string();
}

TEST(UcxReconnect, ReconnectErrorsNameThePeer) {
  auto a = make(attention_node(0), {expert_node(0)});
  ASSERT_TRUE(a);
  uint16_t dead_port = 0;
  {
    auto tmp = make(expert_node(0), {});
    ASSERT_TRUE(tmp);
    dead_port = tmp->address().port;
  }
  Status st = a->reconnect({expert_node(0), "127.0.0.1", dead_port}, 400ms);
  EXPECT_EQ(st.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(st.message().find("expert[0]"), std::string::npos) << st.message();
  st = a->reconnect({expert_node(5), "127.0.0.1", dead_port}, 400ms);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.to_string();
  EXPECT_EQ(a->expect(std::vector<NodeId>{expert_node(1)}).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(a->peer_status(expert_node(9)).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tandem::transport
