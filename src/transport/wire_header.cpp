#include "tandem/transport/wire_header.h"

#include <array>
#include <bit>
#include <cstring>
#include <string>

namespace tandem::transport {
namespace {

constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

constexpr size_t kChecksumOffset = kWireHeaderBytes - 4;

// Explicit codes: the wire format must not follow reorderings of DType.
uint8_t dtype_code(DType t) {
  switch (t) {
    case DType::kF32: return 1;
    case DType::kF16: return 2;
    case DType::kBF16: return 3;
    case DType::kF64: return 4;
    case DType::kI64: return 5;
    case DType::kI32: return 6;
    case DType::kI16: return 7;
    case DType::kI8: return 8;
    case DType::kU8: return 9;
    case DType::kBool: return 10;
  }
  return 0;
}

bool dtype_from_code(uint8_t code, DType* out) {
  static constexpr DType kByCode[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kF64, DType::kI64,
                                      DType::kI32, DType::kI16, DType::kI8,   DType::kU8,  DType::kBool};
  if (code == 0 || code > std::size(kByCode)) return false;
  *out = kByCode[code - 1];
  return true;
}

bool valid_kind(uint8_t k) { return k >= 1 && k <= 4; }
bool valid_role(uint8_t r) { return r == 1 || r == 2; }

// Why the header cannot describe its payload, or empty.
std::string field_error(MessageKind kind, DType dtype, uint32_t num_tokens, uint32_t hidden_size,
                        uint64_t payload_bytes) {
  if (payload_bytes > kMaxPayloadBytes) return "payload of " + std::to_string(payload_bytes) + " bytes exceeds the limit";
  // tokens * hidden * element size can overflow 64 bits; dividing the payload cannot.
  const uint64_t elems = uint64_t{num_tokens} * hidden_size;
  const uint64_t esize = dtype_size(dtype);
  if (elems > payload_bytes / esize) {
    return std::to_string(num_tokens) + "x" + std::to_string(hidden_size) + " " + std::string(dtype_name(dtype)) +
           " activations do not fit a payload of " + std::to_string(payload_bytes) + " bytes";
  }
  if ((kind == MessageKind::kHello || kind == MessageKind::kHelloAck) && payload_bytes != 0) {
    return "handshake with a payload";
  }
  return {};
}

template <typename T>
void put(WireHeader& out, size_t off, T v) {
  // x86-64 and aarch64 Linux are little-endian; the static_assert keeps it honest.
  static_assert(std::endian::native == std::endian::little);
  std::memcpy(out.data() + off, &v, sizeof(T));
}

template <typename T>
T get(const std::byte* in, size_t off) {
  T v;
  std::memcpy(&v, in + off, sizeof(T));
  return v;
}

Status corrupt(const std::string& why) { return data_loss("corrupt message header: " + why); }

}  // namespace

uint32_t crc32c(std::span<const std::byte> bytes) {
  uint32_t c = 0xffffffffu;
  for (std::byte b : bytes) c = kCrc32cTable[(c ^ static_cast<uint8_t>(b)) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

Result<WireHeader> encode_header(const MessageHeader& h) {
  if (!valid_kind(static_cast<uint8_t>(h.kind))) return invalid_argument("bad message kind");
  if (!valid_role(static_cast<uint8_t>(h.sender.role))) return invalid_argument("bad sender role");
  if (dtype_code(h.dtype) == 0) return invalid_argument("bad dtype");
  std::string err = field_error(h.kind, h.dtype, h.num_tokens, h.hidden_size, h.payload_bytes);
  if (!err.empty()) return invalid_argument(err);

  WireHeader out{};
  put<uint32_t>(out, 0, kWireMagic);
  put<uint16_t>(out, 4, kWireVersion);
  put<uint16_t>(out, 6, static_cast<uint16_t>(kWireHeaderBytes));
  put<uint8_t>(out, 8, static_cast<uint8_t>(h.kind));
  put<uint8_t>(out, 9, dtype_code(h.dtype));
  put<uint8_t>(out, 10, static_cast<uint8_t>(h.sender.role));
  put<uint8_t>(out, 11, 0);
  put<uint32_t>(out, 12, h.sender.rank);
  put<uint32_t>(out, 16, h.layer);
  put<uint32_t>(out, 20, h.micro_batch);
  put<uint64_t>(out, 28, h.sequence);
  put<uint64_t>(out, 36, h.payload_bytes);
  put<uint32_t>(out, 44, h.num_tokens);
  put<uint32_t>(out, 48, h.hidden_size);
  put<uint32_t>(out, kChecksumOffset, crc32c(std::span<const std::byte>(out.data(), kChecksumOffset)));
  return out;
}

Result<MessageHeader> decode_header(std::span<const std::byte> bytes) {
  if (bytes.size() != kWireHeaderBytes) {
    return corrupt(std::to_string(bytes.size()) + " bytes, expected " + std::to_string(kWireHeaderBytes));
  }
  const std::byte* p = bytes.data();
  if (get<uint32_t>(p, 0) != kWireMagic) return corrupt("bad magic");
  // Checksum before any other field: a flipped bit anywhere is reported as such.
  if (get<uint32_t>(p, kChecksumOffset) != crc32c(bytes.first(kChecksumOffset))) return corrupt("checksum mismatch");
  if (const uint16_t v = get<uint16_t>(p, 4); v != kWireVersion) {
    return corrupt("unsupported version " + std::to_string(v));
  }
  if (get<uint16_t>(p, 6) != kWireHeaderBytes) return corrupt("bad header size");
  const uint8_t kind = get<uint8_t>(p, 8);
  if (!valid_kind(kind)) return corrupt("bad kind " + std::to_string(kind));
  MessageHeader h;
  if (!dtype_from_code(get<uint8_t>(p, 9), &h.dtype)) return corrupt("bad dtype");
  const uint8_t role = get<uint8_t>(p, 10);
  if (!valid_role(role)) return corrupt("bad sender role");
  if (get<uint8_t>(p, 11) != 0 || get<uint32_t>(p, 24) != 0 || get<uint64_t>(p, 52) != 0) {
    return corrupt("reserved bits set");
  }
  h.kind = static_cast<MessageKind>(kind);
  h.sender = {static_cast<Role>(role), get<uint32_t>(p, 12)};
  h.layer = get<uint32_t>(p, 16);
  h.micro_batch = get<uint32_t>(p, 20);
  h.sequence = get<uint64_t>(p, 28);
  h.payload_bytes = get<uint64_t>(p, 36);
  h.num_tokens = get<uint32_t>(p, 44);
  h.hidden_size = get<uint32_t>(p, 48);
  std::string err = field_error(h.kind, h.dtype, h.num_tokens, h.hidden_size, h.payload_bytes);
  if (!err.empty()) return corrupt(err);
  return h;
}

}  // namespace tandem::transport
