// UCX over loopback tcp, every node in its own thread of this process.
#include "tandem/transport/ucx_transport.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <thread>

#include "transport_test_util.h"

namespace tandem::transport {
namespace {

using namespace testing;
using Clock = std::chrono::steady_clock;

std::unique_ptr<Transport> make(NodeId id) {
  auto t = create_ucx_transport(loopback_options(id));
  EXPECT_TRUE(t.is_ok()) << t.status().to_string();
  return t.is_ok() ? std::move(*t) : nullptr;
}

struct Mesh {
  std::vector<std::unique_ptr<Transport>> attention, experts;

  Mesh(uint32_t m, uint32_t n) {
    for (uint32_t i = 0; i < m; ++i) attention.push_back(make(attention_node(i)));
    for (uint32_t i = 0; i < n; ++i) experts.push_back(make(expert_node(i)));
  }
  std::vector<Transport*> all() const {
    std::vector<Transport*> v;
    for (auto& t : attention) v.push_back(t.get());
    for (auto& t : experts) v.push_back(t.get());
    return v;
  }
  static std::vector<NodeId> ids(const std::vector<std::unique_ptr<Transport>>& ts) {
    std::vector<NodeId> v;
    for (auto& t : ts) v.push_back(t->self());
    return v;
  }
  Status exchange(const Exchange& x) {
    std::vector<std::future<Status>> runs;
    for (auto& a : attention) {
      runs.push_back(std::async(std::launch::async, [&, t = a.get()] { return run_attention(*t, ids(experts), x); }));
    }
    for (auto& e : experts) {
      runs.push_back(std::async(std::launch::async, [&, t = e.get()] { return run_expert(*t, ids(attention), x); }));
    }
    Status first;
    for (auto& r : runs) {
      Status s = r.get();
      if (first.is_ok()) first = s;
    }
    return first;
  }
};

TEST(UcxTransport, ReportsTheEphemeralPortItListensOn) {
  auto t = make(expert_node(0));
  ASSERT_TRUE(t);
  EXPECT_EQ(t->address().host, "127.0.0.1");
  EXPECT_NE(t->address().port, 0);
  EXPECT_EQ(t->address().id, expert_node(0));
}

TEST(UcxTransport, MeshTwoByTwoInThreads) {
  Mesh m(2, 2);
  ASSERT_TRUE(connect_all(m.all(), 10s).is_ok());
  Exchange x;
  x.layers = 8;
  x.micro_batches = 3;
  Status st = m.exchange(x);
  EXPECT_TRUE(st.is_ok()) << st.to_string();
}

TEST(UcxTransport, MeshTwoByThreeInThreads) {
  Mesh m(2, 3);
  ASSERT_TRUE(connect_all(m.all(), 10s).is_ok());
  Exchange x;
  x.layers = 4;
  x.micro_batches = 4;
  Status st = m.exchange(x);
  EXPECT_TRUE(st.is_ok()) << st.to_string();
}

TEST(UcxTransport, EverySizeFromOneByteToFourMiBArrivesIntact) {
  Mesh m(1, 1);
  ASSERT_TRUE(connect_all(m.all(), 10s).is_ok());
  Transport& a = *m.attention[0];
  Transport& e = *m.experts[0];
  const std::vector<size_t> sizes = {0,     1,     2,         7,         63,        64,     1000,
                                     4095,  4096,  8191,      8193,      65535,     65536,  65537,
                                     262144, 999999, 1 << 20, (1 << 20) + 3, 4 << 20};
  std::vector<Buffer> keep;
  std::vector<SendHandle> sends;
  for (uint32_t i = 0; i < sizes.size(); ++i) {
    auto h = send_pattern(a, e.self(), MessageKind::kDispatch, i, 0, sizes[i], keep);
    ASSERT_TRUE(h.is_ok()) << h.status().to_string();
    sends.push_back(*h);
    auto back = send_pattern(e, a.self(), MessageKind::kCombine, i, 0, sizes[i], keep);
    ASSERT_TRUE(back.is_ok()) << back.status().to_string();
    sends.push_back(*back);
  }
  for (uint32_t i = 0; i < sizes.size(); ++i) {
    Status st = recv_pattern(e, a.self(), MessageKind::kDispatch, i, 0, sizes[i], 10s);
    EXPECT_TRUE(st.is_ok()) << sizes[i] << ": " << st.to_string();
    st = recv_pattern(a, e.self(), MessageKind::kCombine, i, 0, sizes[i], 10s);
    EXPECT_TRUE(st.is_ok()) << sizes[i] << ": " << st.to_string();
  }
  for (auto& s : sends) EXPECT_TRUE(s.wait(10s).is_ok());
}

TEST(UcxTransport, SlowSenderDoesNotDelayAnotherSender) {
  Mesh m(2, 1);
  ASSERT_TRUE(connect_all(m.all(), 10s).is_ok());
  Transport& slow = *m.attention[0];
  Transport& fast = *m.attention[1];
  Transport& e = *m.experts[0];
  std::atomic<bool> slow_sent{false};
  std::vector<Buffer> keep_slow, keep_fast;
  // The slow sender already has a big message of layer 0 in flight and holds
  // back layer 1; the fast one's layer-1 message must not wait for either.
  auto big = send_pattern(slow, e.self(), MessageKind::kDispatch, 0, 0, 4 << 20, keep_slow);
  ASSERT_TRUE(big.is_ok());
  auto slow_thread = std::async(std::launch::async, [&] {
    std::this_thread::sleep_for(1500ms);
    slow_sent = true;
    return send_pattern(slow, e.self(), MessageKind::kDispatch, 1, 0, 1000, keep_slow).status();
  });
  ASSERT_TRUE(send_pattern(fast, e.self(), MessageKind::kDispatch, 1, 0, 1000, keep_fast).is_ok());
  const auto t0 = Clock::now();
  Status st = recv_pattern(e, fast.self(), MessageKind::kDispatch, 1, 0, 1000, 5s);
  EXPECT_TRUE(st.is_ok()) << st.to_string();
  EXPECT_FALSE(slow_sent) << "fast sender's message waited " << (Clock::now() - t0).count() / 1000000 << " ms";
  EXPECT_TRUE(slow_thread.get().is_ok());
  EXPECT_TRUE(recv_pattern(e, slow.self(), MessageKind::kDispatch, 1, 0, 1000, 5s).is_ok());
  EXPECT_TRUE(recv_pattern(e, slow.self(), MessageKind::kDispatch, 0, 0, 4 << 20, 5s).is_ok());
}

TEST(UcxTransport, ReceiveTimeoutIsDeadlineExceededNamingPeerAndTag) {
  Mesh m(1, 1);
  ASSERT_TRUE(connect_all(m.all(), 10s).is_ok());
  const auto t0 = Clock::now();
  Status st = m.experts[0]->recv(TagFilter::exact(7, 2, attention_node(0)), 100ms).status();
  const auto waited = Clock::now() - t0;
  EXPECT_EQ(st.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(st.message().find("layer=7 micro_batch=2 from attention[0]"), std::string::npos) << st.message();
  EXPECT_GE(waited, 100ms);
  EXPECT_LT(waited, 2s);
}

TEST(UcxTransport, CorruptMessagesAreDataLossForTheirSenderOnly) {
  Mesh m(4, 1);
  ASSERT_TRUE(connect_all(m.all(), 10s).is_ok());
  const NodeId e = expert_node(0);
  MessageHeader h;
  h.layer = 5;

  // attention[0]: one flipped bit.
  {
    Transport& a = *m.attention[0];
    auto buf = take(a.allocate(100));
    h.sender = a.self();
    h.payload_bytes = 100;
    auto wire = *encode_header(h);
    wire[20] ^= std::byte{0x04};
    ASSERT_TRUE(a.send_raw(e, wire, buf, 100).is_ok());
  }
  // attention[1]: a header cut short (and a rendezvous-sized payload).
  {
    Transport& a = *m.attention[1];
    auto buf = take(a.allocate(1 << 20));
    h.sender = a.self();
    h.payload_bytes = 1 << 20;
    auto wire = *encode_header(h);
    ASSERT_TRUE(a.send_raw(e, std::span(wire).first(40), buf, 1 << 20).is_ok());
  }
  // attention[2]: a valid header announcing more payload than arrives.
  {
    Transport& a = *m.attention[2];
    auto buf = take(a.allocate(100));
    h.sender = a.self();
    h.payload_bytes = 100;
    auto wire = *encode_header(h);
    ASSERT_TRUE(a.send_raw(e, wire, buf, 50).is_ok());
  }
  for (uint32_t i = 0; i < 3; ++i) {
    Status st = m.experts[0]->recv(TagFilter::exact(5, 0, attention_node(i)), 5s).status();
    EXPECT_EQ(st.code(), StatusCode::kDataLoss) << i << ": " << st.to_string();
  }
  // attention[3] is healthy and unaffected.
  std::vector<Buffer> keep;
  ASSERT_TRUE(send_pattern(*m.attention[3], e, MessageKind::kDispatch, 5, 0, 100, keep).is_ok());
  Status st = recv_pattern(*m.experts[0], attention_node(3), MessageKind::kDispatch, 5, 0, 100, 5s);
  EXPECT_TRUE(st.is_ok()) << st.to_string();
}

TEST(UcxTransport, PeerThatShutsDownIsUnavailable) {
  Mesh m(1, 2);
  ASSERT_TRUE(connect_all(m.all(), 10s).is_ok());
  Transport& a = *m.attention[0];
  std::vector<Buffer> keep;
  // Sent before the shutdown: still delivered, and still returned afterwards.
  ASSERT_TRUE(send_pattern(*m.experts[1], a.self(), MessageKind::kCombine, 0, 0, 5000, keep).is_ok());
  auto waiting = std::async(std::launch::async,
                            [&] { return a.recv(TagFilter::exact(1, 0, expert_node(1)), 20s).status(); });
  std::this_thread::sleep_for(100ms);
  const auto t0 = Clock::now();
  keep.clear();
  m.experts[1].reset();
  Status st = waiting.get();
  EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.to_string();
  EXPECT_LT(Clock::now() - t0, 5s);
  EXPECT_TRUE(recv_pattern(a, expert_node(1), MessageKind::kCombine, 0, 0, 5000, 1s).is_ok());
  EXPECT_EQ(send_pattern(a, expert_node(1), MessageKind::kDispatch, 2, 0, 10, keep).status().code(),
            StatusCode::kUnavailable);
  // The other expert is unaffected.
  ASSERT_TRUE(send_pattern(a, expert_node(0), MessageKind::kDispatch, 2, 0, 10, keep).is_ok());
  EXPECT_TRUE(recv_pattern(*m.experts[0], a.self(), MessageKind::kDispatch, 2, 0, 10, 5s).is_ok());
}

TEST(UcxTransport, ConnectTimeoutNamesTheMissingPeer) {
  auto a = make(attention_node(0));
  ASSERT_TRUE(a);
  // A port that was just in use and is now closed: connection refused, retried.
  uint16_t dead_port = 0;
  {
    auto tmp = make(expert_node(3));
    ASSERT_TRUE(tmp);
    dead_port = tmp->address().port;
  }
  std::vector<PeerAddress> peers = {{expert_node(3), "127.0.0.1", dead_port}};
  Status st = a->connect(peers, 500ms);
  EXPECT_EQ(st.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(st.message().find("expert[3]"), std::string::npos) << st.message();
  std::vector<Buffer> keep;
  EXPECT_EQ(send_pattern(*a, expert_node(3), MessageKind::kDispatch, 0, 0, 10, keep).status().code(),
            StatusCode::kUnavailable);
}

TEST(UcxTransport, DialerRetriesUntilThePeerListens) {
  // The expert's port is only known once it listens, so reserve one by
  // listening and closing, then start the expert on it after the attention
  // node began dialing.
  uint16_t port = 0;
  {
    auto tmp = make(expert_node(0));
    ASSERT_TRUE(tmp);
    port = tmp->address().port;
  }
  auto a = make(attention_node(0));
  ASSERT_TRUE(a);
  std::vector<PeerAddress> peers = {{expert_node(0), "127.0.0.1", port}};
  auto connecting = std::async(std::launch::async, [&] { return a->connect(peers, 10s); });
  std::this_thread::sleep_for(300ms);
  UcxOptions o = loopback_options(expert_node(0));
  o.listen_port = port;
  auto e = create_ucx_transport(o);
  ASSERT_TRUE(e.is_ok()) << e.status().to_string();
  std::vector<PeerAddress> back = {a->address()};
  EXPECT_TRUE((*e)->connect(back, 10s).is_ok());
  EXPECT_TRUE(connecting.get().is_ok());
}

TEST(UcxTransport, MessagesAndBuffersOutliveTheirTransport) {
  std::vector<Buffer> keep;
  std::vector<Message> got;
  {
    Mesh m(1, 1);
    ASSERT_TRUE(connect_all(m.all(), 10s).is_ok());
    Transport& a = *m.attention[0];
    for (uint32_t layer = 0; layer < 2; ++layer) {
      auto h = send_pattern(a, expert_node(0), MessageKind::kDispatch, layer, 0, layer ? 300000 : 100, keep);
      ASSERT_TRUE(h.is_ok());
      ASSERT_TRUE(h->wait(5s).is_ok());
      auto msg = m.experts[0]->recv(TagFilter::exact(layer, 0, a.self()), 5s);
      ASSERT_TRUE(msg.is_ok()) << msg.status().to_string();
      got.push_back(std::move(msg).value());
    }
  }
  // Registered memory stays valid (and is unregistered later) without its transport.
  for (uint32_t layer = 0; layer < 2; ++layer) {
    EXPECT_EQ(first_mismatch(got[layer].data(), message_seed(attention_node(0), expert_node(0), layer, 0)), -1);
  }
  got.clear();
  keep.clear();
}

TEST(UcxTransport, RejectsBadSends) {
  Mesh m(1, 1);
  Transport& a = *m.attention[0];
  auto buf = take(a.allocate(16));
  MessageHeader h;
  EXPECT_EQ(a.send(expert_node(0), h, buf, 16).status().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(connect_all(m.all(), 10s).is_ok());
  EXPECT_EQ(a.send(expert_node(5), h, buf, 16).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(a.send(expert_node(0), h, buf, 17).status().code(), StatusCode::kInvalidArgument);
  auto foreign = take(m.experts[0]->allocate(16));
  EXPECT_EQ(a.send(expert_node(0), h, foreign, 16).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tandem::transport
