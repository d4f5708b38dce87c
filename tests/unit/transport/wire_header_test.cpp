// The header decoder against hostile input: random bytes, truncations and bit
// flips must all come back as DATA_LOSS, never crash or pass.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "tandem/transport/wire_header.h"

namespace tandem::transport {
namespace {

MessageHeader sample_header() {
  MessageHeader h;
  h.kind = MessageKind::kCombine;
  h.layer = 31;
  h.micro_batch = 3;
  h.num_tokens = 128;
  h.hidden_size = 7168;
  h.dtype = DType::kBF16;
  h.sender = expert_node(5);
  h.sequence = 0x0123456789abcdefull;
  h.payload_bytes = 128ull * 7168 * 2 + 4096;  // activations + routing data
  return h;
}

// Rewrites the checksum, so a field change is judged on its own merits.
void reseal(WireHeader& w) {
  uint32_t crc = crc32c(std::span<const std::byte>(w.data(), kWireHeaderBytes - 4));
  std::memcpy(w.data() + kWireHeaderBytes - 4, &crc, 4);
}

TEST(WireHeader, RoundTrip) {
  const MessageHeader h = sample_header();
  auto w = encode_header(h);
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  auto d = decode_header(*w);
  ASSERT_TRUE(d.is_ok()) << d.status().to_string();
  EXPECT_EQ(d->kind, h.kind);
  EXPECT_EQ(d->layer, h.layer);
  EXPECT_EQ(d->micro_batch, h.micro_batch);
  EXPECT_EQ(d->num_tokens, h.num_tokens);
  EXPECT_EQ(d->hidden_size, h.hidden_size);
  EXPECT_EQ(d->dtype, h.dtype);
  EXPECT_EQ(d->sender, h.sender);
  EXPECT_EQ(d->sequence, h.sequence);
  EXPECT_EQ(d->payload_bytes, h.payload_bytes);
}

TEST(WireHeader, Crc32cKnownAnswer) {
  // RFC 3720 test vector: CRC-32C of "123456789".
  const char* s = "123456789";
  EXPECT_EQ(crc32c(std::as_bytes(std::span(s, 9))), 0xe3069283u);
}

TEST(WireHeader, EncodeRejectsInconsistentHeaders) {
  MessageHeader h = sample_header();
  h.payload_bytes = 100;  // 128x7168 bf16 does not fit
  EXPECT_EQ(encode_header(h).status().code(), StatusCode::kInvalidArgument);
  h = sample_header();
  h.num_tokens = 0xffffffffu;
  h.hidden_size = 0xffffffffu;  // product overflows 64 bits with the element size
  EXPECT_EQ(encode_header(h).status().code(), StatusCode::kInvalidArgument);
  h = sample_header();
  h.kind = static_cast<MessageKind>(9);
  EXPECT_EQ(encode_header(h).status().code(), StatusCode::kInvalidArgument);
  h = sample_header();
  h.payload_bytes = kMaxPayloadBytes + 1;
  EXPECT_EQ(encode_header(h).status().code(), StatusCode::kInvalidArgument);
}

TEST(WireHeader, TruncatedAndOversizedAreDataLoss) {
  auto w = *encode_header(sample_header());
  for (size_t n = 0; n < kWireHeaderBytes; ++n) {
    auto d = decode_header(std::span<const std::byte>(w.data(), n));
    ASSERT_EQ(d.status().code(), StatusCode::kDataLoss) << n;
  }
  std::vector<std::byte> longer(w.begin(), w.end());
  longer.push_back(std::byte{0});
  EXPECT_EQ(decode_header(longer).status().code(), StatusCode::kDataLoss);
}

TEST(WireHeader, EverySingleBitFlipIsDataLoss) {
  const auto w = *encode_header(sample_header());
  for (size_t bit = 0; bit < kWireHeaderBytes * 8; ++bit) {
    auto f = w;
    f[bit / 8] ^= std::byte(1u << (bit % 8));
    auto d = decode_header(f);
    ASSERT_EQ(d.status().code(), StatusCode::kDataLoss) << "bit " << bit;
  }
}

TEST(WireHeader, RandomMultiBitFlipsAreDataLoss) {
  std::mt19937_64 rng(12345);
  const auto w = *encode_header(sample_header());
  for (int i = 0; i < 20000; ++i) {
    auto f = w;
    const int flips = 2 + static_cast<int>(rng() % 6);
    for (int k = 0; k < flips; ++k) f[rng() % kWireHeaderBytes] ^= std::byte(1u << (rng() % 8));
    if (f == w) continue;
    ASSERT_EQ(decode_header(f).status().code(), StatusCode::kDataLoss) << "iteration " << i;
  }
}

TEST(WireHeader, RandomBytesOfRandomLengthAreDataLoss) {
  std::mt19937_64 rng(777);
  std::vector<std::byte> buf;
  for (int i = 0; i < 50000; ++i) {
    buf.resize(rng() % 2 ? kWireHeaderBytes : rng() % 160);
    for (auto& b : buf) b = std::byte(rng());
    // Half of them start with the right magic, to get past the first check.
    if (buf.size() >= 4 && i % 2) std::memcpy(buf.data(), &kWireMagic, 4);
    ASSERT_EQ(decode_header(buf).status().code(), StatusCode::kDataLoss) << "iteration " << i;
  }
}

TEST(WireHeader, ValidChecksumButBadFieldsAreDataLoss) {
  const auto good = *encode_header(sample_header());
  struct Case {
    const char* name;
    size_t offset;
    std::vector<uint8_t> bytes;
  };
  const Case cases[] = {
      {"version", 4, {2, 0}},
      {"header size", 6, {32, 0}},
      {"kind", 8, {0}},
      {"kind", 8, {200}},
      {"dtype", 9, {0}},
      {"dtype", 9, {11}},
      {"role", 10, {0}},
      {"role", 10, {3}},
      {"flags", 11, {1}},
      {"reserved", 24, {1}},
      {"reserved", 59, {0x80}},
      {"payload too big", 36, {0, 0, 0, 0, 2, 0, 0, 0}},
      {"activations overflow payload", 44, {0xff, 0xff, 0xff, 0xff}},
  };
  for (const Case& c : cases) {
    auto w = good;
    std::memcpy(w.data() + c.offset, c.bytes.data(), c.bytes.size());
    reseal(w);
    auto d = decode_header(w);
    EXPECT_EQ(d.status().code(), StatusCode::kDataLoss) << c.name;
  }
  // A handshake must not carry a payload.
  MessageHeader hello;
  hello.kind = MessageKind::kHello;
  hello.sender = attention_node(1);
  auto w = *encode_header(hello);
  ASSERT_TRUE(decode_header(w).is_ok());
  const uint64_t one = 1;
  std::memcpy(w.data() + 36, &one, 8);
  reseal(w);
  EXPECT_EQ(decode_header(w).status().code(), StatusCode::kDataLoss);
}

}  // namespace
}  // namespace tandem::transport
