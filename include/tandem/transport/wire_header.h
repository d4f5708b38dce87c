// The fixed 64-byte header in front of every M2N payload. Little-endian.
//
//   off size field
//     0    4 magic "TDM2"         28    8 sequence
//     4    2 version (1)          36    8 payload_bytes
//     6    2 header_bytes (64)    44    4 num_tokens
//     8    1 kind                 48    4 hidden_size
//     9    1 dtype                52    8 reserved (0)
//    10    1 sender role          60    4 CRC-32C of bytes [0, 60)
//    11    1 flags (0)
//    12    4 sender rank
//    16    4 layer
//    20    4 micro_batch
//    24    4 reserved (0)
//
// The decoder treats its input as hostile: any malformed, truncated or
// bit-flipped header is DATA_LOSS, never a crash.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

#include "tandem/common/status.h"
#include "tandem/transport/types.h"

namespace tandem::transport {

inline constexpr size_t kWireHeaderBytes = 64;
inline constexpr uint32_t kWireMagic = 0x324d4454;  // "TDM2" read as little-endian u32
inline constexpr uint16_t kWireVersion = 1;
// Bigger payloads are rejected as corrupt rather than allocated.
inline constexpr uint64_t kMaxPayloadBytes = uint64_t{1} << 32;

using WireHeader = std::array<std::byte, kWireHeaderBytes>;

// CRC-32C (Castagnoli) of `bytes`.
uint32_t crc32c(std::span<const std::byte> bytes);

// Checks the fields a sender controls (kind, dtype, activation matrix fits the
// payload, payload bound) and encodes. INVALID_ARGUMENT on a bad header.
Result<WireHeader> encode_header(const MessageHeader& header);

// DATA_LOSS unless `bytes` is exactly one valid header.
Result<MessageHeader> decode_header(std::span<const std::byte> bytes);

}  // namespace tandem::transport
