// NCCL loaded at run time and two-rank pairs over it (transport.backend:
// nccl). Loading and ids need no GPU and run in CI; moving bytes needs two
// GPUs (NCCL refuses both ranks on one), so those tests skip elsewhere.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "tandem/kernels/cuda.h"
#include "tandem/transport/nccl_p2p.h"

namespace tandem::transport {
namespace {

namespace kc = tandem::kernels::cuda;

TEST(NcclLoader, LoadsAndMakesDistinctUniqueIds) {
  if (Status st = nccl_available(); !st.is_ok()) GTEST_SKIP() << st.message();
  EXPECT_EQ(nccl_version().rfind("2.", 0), 0u) << nccl_version();
  auto a = nccl_unique_id();
  auto b = nccl_unique_id();
  ASSERT_TRUE(a.is_ok()) << a.status().to_string();
  ASSERT_TRUE(b.is_ok()) << b.status().to_string();
  EXPECT_EQ(a->size(), 128u);
  EXPECT_NE(*a, *b);
}

TEST(NcclLoader, JoinRefusesMalformedIdsAndRanks) {
  if (Status st = nccl_available(); !st.is_ok()) GTEST_SKIP() << st.message();
  auto short_id = NcclPair::join(std::string(100, 'x'), 0);
  EXPECT_EQ(short_id.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(short_id.status().message().find("100 bytes, expected 128"), std::string::npos)
      << short_id.status().message();
  auto id = nccl_unique_id();
  ASSERT_TRUE(id.is_ok());
  EXPECT_EQ(NcclPair::join(*id, 2).status().code(), StatusCode::kInvalidArgument);
}

class NcclTwoGpus : public ::testing::Test {
 protected:
  void SetUp() override {
    if (Status st = nccl_available(); !st.is_ok()) GTEST_SKIP() << st.message();
    auto n = kc::device_count();
    if (!n.is_ok() || *n < 2) GTEST_SKIP() << "needs two GPUs (NCCL cannot put both ranks on one)";
    ASSERT_TRUE(kc::set_device(0).is_ok());
    auto a = kc::Stream::create("rank 0");
    ASSERT_TRUE(a.is_ok());
    s0 = std::move(a).value();
    ASSERT_TRUE(kc::set_device(1).is_ok());
    auto b = kc::Stream::create("rank 1");
    ASSERT_TRUE(b.is_ok());
    s1 = std::move(b).value();
  }

  // Both ranks from this thread: joining and posting the connection tokens
  // do not wait, so rank 0 on GPU 0 and rank 1 on GPU 1 are each joined and
  // posted before either is waited for (as the nodes do from two processes).
  void make_pair(std::unique_ptr<NcclPair>& r0, std::unique_ptr<NcclPair>& r1) {
    auto id = nccl_unique_id();
    ASSERT_TRUE(id.is_ok());
    ASSERT_TRUE(kc::set_device(0).is_ok());
    auto a = NcclPair::join(*id, 0);
    ASSERT_TRUE(a.is_ok()) << a.status().to_string();
    ASSERT_TRUE(kc::set_device(1).is_ok());
    auto b = NcclPair::join(*id, 1);
    ASSERT_TRUE(b.is_ok()) << b.status().to_string();
    r0 = std::move(a).value();
    r1 = std::move(b).value();
    const auto t = std::chrono::seconds(30);
    ASSERT_TRUE(kc::set_device(0).is_ok());
    TANDEM_ASSERT_OK(r0->ready(t));
    ASSERT_TRUE(kc::set_device(1).is_ok());
    TANDEM_ASSERT_OK(r1->ready(t));
    // Before connecting, transfers are refused; so are default streams.
    EXPECT_EQ(r1->recv(nullptr, 0, s1.get()).code(), StatusCode::kFailedPrecondition);
    ASSERT_TRUE(kc::set_device(0).is_ok());
    TANDEM_ASSERT_OK(r0->start_connect(s0.get()));
    ASSERT_TRUE(kc::set_device(1).is_ok());
    TANDEM_ASSERT_OK(r1->start_connect(s1.get()));
    ASSERT_TRUE(kc::set_device(0).is_ok());
    TANDEM_ASSERT_OK(r0->finish_connect(t));
    ASSERT_TRUE(kc::set_device(1).is_ok());
    TANDEM_ASSERT_OK(r1->finish_connect(t));
    EXPECT_TRUE(r0->is_ready() && r1->is_ready());
    EXPECT_EQ(r0->send(nullptr, 0, nullptr).code(), StatusCode::kInvalidArgument);
  }

  kc::Stream s0, s1;  // explicit streams on GPU 0 and GPU 1
};

TEST_F(NcclTwoGpus, PairMovesBytesBothWays) {
  std::unique_ptr<NcclPair> r0, r1;
  make_pair(r0, r1);
  ASSERT_TRUE(r0 && r1);
  for (size_t bytes : {size_t{4}, size_t{4096}, size_t{3} << 20}) {
    std::vector<uint8_t> src(bytes), got(bytes);
    for (size_t i = 0; i < bytes; ++i) src[i] = static_cast<uint8_t>(i * 7 + bytes);
    ASSERT_TRUE(kc::set_device(0).is_ok());
    auto d0 = kc::DeviceBuffer::allocate(bytes, "rank 0");
    ASSERT_TRUE(d0.is_ok());
    {
      kc::StreamGuard g(s0.get());
      TANDEM_ASSERT_OK(kc::copy_to_device(d0->data(), src.data(), bytes));
      TANDEM_ASSERT_OK(kc::synchronize());
    }
    ASSERT_TRUE(kc::set_device(1).is_ok());
    auto d1 = kc::DeviceBuffer::allocate(bytes, "rank 1");
    ASSERT_TRUE(d1.is_ok());
    auto done = kc::Event::create("receive");
    ASSERT_TRUE(done.is_ok());
    // Receive posted first, on GPU 1; then the send on GPU 0.
    TANDEM_ASSERT_OK(r1->recv(d1->data(), bytes, s1.get()));
    TANDEM_ASSERT_OK(done->record(s1.get()));
    ASSERT_TRUE(kc::set_device(0).is_ok());
    TANDEM_ASSERT_OK(r0->send(d0->data(), bytes, s0.get()));
    TANDEM_ASSERT_OK(done->wait_for(std::chrono::seconds(30), "NCCL receive"));
    ASSERT_TRUE(kc::set_device(1).is_ok());
    {
      kc::StreamGuard g(s1.get());
      TANDEM_ASSERT_OK(kc::copy_to_host(got.data(), d1->data(), bytes));
    }
    EXPECT_EQ(got, src) << bytes << " bytes";
    // And back: rank 1 sends what it got to rank 0.
    TANDEM_ASSERT_OK(r1->send(d1->data(), bytes, s1.get()));
    ASSERT_TRUE(kc::set_device(0).is_ok());
    {
      kc::StreamGuard g(s0.get());
      TANDEM_ASSERT_OK(kc::fill_zero(d0->data(), bytes));
      TANDEM_ASSERT_OK(r0->recv(d0->data(), bytes, s0.get()));
      TANDEM_ASSERT_OK(kc::copy_to_host(got.data(), d0->data(), bytes));
    }
    EXPECT_EQ(got, src) << bytes << " bytes back";
    ASSERT_TRUE(kc::set_device(1).is_ok());
    {
      kc::StreamGuard g(s1.get());
      TANDEM_ASSERT_OK(kc::synchronize());
    }
  }
  EXPECT_TRUE(r0->check().is_ok());
  EXPECT_TRUE(r1->check().is_ok());
}

// A receive whose sender never sends waits for ever on the device; abort()
// ends it, which is how the nodes get out of a link to a dead peer.
TEST_F(NcclTwoGpus, AbortEndsAReceiveThatIsNeverMatched) {
  std::unique_ptr<NcclPair> r0, r1;
  make_pair(r0, r1);
  ASSERT_TRUE(r0 && r1);
  ASSERT_TRUE(kc::set_device(0).is_ok());
  auto buf = kc::DeviceBuffer::allocate(1 << 20, "receive");
  ASSERT_TRUE(buf.is_ok());
  auto done = kc::Event::create("receive");
  ASSERT_TRUE(done.is_ok());
  TANDEM_ASSERT_OK(r0->recv(buf->data(), 1 << 20, s0.get()));
  TANDEM_ASSERT_OK(done->record(s0.get()));
  Status waited = done->wait_for(std::chrono::milliseconds(300), "unmatched receive");
  EXPECT_EQ(waited.code(), StatusCode::kDeadlineExceeded) << waited.to_string();
  r0->abort();
  r1->abort();
  EXPECT_TRUE(done->wait_for(std::chrono::seconds(20), "aborted receive").is_ok());
  EXPECT_EQ(r0->send(buf->data(), 4, s0.get()).code(), StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace tandem::transport
