// The control messages of the device-resident data planes (cuda_ipc, nccl)
// are read in place on the expert node, so every field that sizes or indexes
// something is checked first: garbage is refused with a message naming what is
// wrong. Needs no GPU (only the message layout).
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "device_data_plane.h"
#include "tandem/transport/moe_payload.h"

namespace tandem::expert {
namespace {

using transport::IpcControlLayout;

std::vector<std::byte> control(uint64_t step, uint64_t seq, uint64_t tokens, size_t top_k,
                               const std::vector<int32_t>& ids, const std::vector<float>& weights) {
  const IpcControlLayout lay{tokens, top_k};
  std::vector<std::byte> c(lay.dispatch_bytes());
  std::memcpy(c.data() + IpcControlLayout::kStepOffset, &step, 8);
  std::memcpy(c.data() + IpcControlLayout::kSeqOffset, &seq, 8);
  std::memcpy(c.data() + IpcControlLayout::kTokensOffset, &tokens, 8);
  std::memcpy(c.data() + lay.ids_offset(), ids.data(), ids.size() * sizeof(int32_t));
  std::memcpy(c.data() + lay.weights_offset(), weights.data(), weights.size() * sizeof(float));
  return c;
}

TEST(DeviceDispatch, ParsesAWellFormedMessageAndAnswersIt) {
  const auto c = control(7, 3, 2, 2, {0, 5, 3, 1}, {0.5f, 0.5f, 0.9f, 0.1f});
  auto d = parse_device_dispatch(c, 2, 8, 16);
  ASSERT_TRUE(d.is_ok()) << d.status().to_string();
  EXPECT_EQ(d->step, 7u);
  EXPECT_EQ(d->seq, 3u);
  EXPECT_EQ(d->tokens, 2u);
  EXPECT_EQ(d->ids[1], 5);
  EXPECT_FLOAT_EQ(d->weights[2], 0.9f);
  std::vector<std::byte> combine(IpcControlLayout::kCombineBytes);
  write_device_combine(combine, *d);
  uint64_t v[3];
  std::memcpy(v, combine.data(), sizeof v);
  EXPECT_EQ(v[0], 7u);
  EXPECT_EQ(v[1], 3u);
  EXPECT_EQ(v[2], 2u);
}

TEST(DeviceDispatch, RefusesGarbageNamingWhatIsWrong) {
  auto refused = [](const std::vector<std::byte>& c, const std::string& what) {
    auto d = parse_device_dispatch(c, 2, 8, 16);
    ASSERT_FALSE(d.is_ok()) << what;
    EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument) << what;
    EXPECT_NE(d.status().message().find(what), std::string::npos) << d.status().message();
  };
  refused(std::vector<std::byte>(10), "control of 10 bytes");
  auto good = control(1, 1, 2, 2, {0, 1, 2, 3}, {1, 0, 1, 0});
  auto truncated = good;
  truncated.resize(truncated.size() - 4);
  refused(truncated, "2 tokens in 52 bytes, expected 56");
  refused(control(1, 1, 17, 2, std::vector<int32_t>(34, 0), std::vector<float>(34, 0.0f)), "17 tokens, at most 16");
  // A token count that would overflow the size computation is caught before it.
  auto huge = good;
  const uint64_t lots = uint64_t{1} << 62;
  std::memcpy(huge.data() + IpcControlLayout::kTokensOffset, &lots, 8);
  refused(huge, "at most 16");
  refused(control(1, 1, 2, 2, {0, 8, 2, 3}, {1, 0, 1, 0}), "expert id 8 out of range");
  refused(control(1, 1, 2, 2, {0, 1, -1, 3}, {1, 0, 1, 0}), "expert id -1 out of range");
}

}  // namespace
}  // namespace tandem::expert
