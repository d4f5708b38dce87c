// Helpers shared by the safetensors reader, the checkpoint-directory loader and
// the writer. Private to tandem_model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "tandem/common/dtype.h"
#include "tandem/common/status.h"
#include "tandem/model/safetensors.h"

namespace tandem::model::safetensors_internal {

// The reference reader's MAX_HEADER_SIZE.
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;
inline constexpr std::string_view kSingleFileName = "model.safetensors";
inline constexpr std::string_view kIndexFileName = "model.safetensors.index.json";

// Offset of the first byte that is not part of well-formed UTF-8 (overlong forms,
// surrogates and code points above U+10FFFF count as malformed), or nullopt.
std::optional<size_t> find_invalid_utf8(std::string_view s);

// "[2, 4]"; "[]" for a 0-rank shape.
std::string shape_to_string(const std::vector<int64_t>& shape);

// prod(shape) * dtype_size, or nullopt on a negative dimension or on overflow.
std::optional<uint64_t> checked_nbytes(DType dtype, const std::vector<int64_t>& shape);

// Parses `text` as JSON, refusing duplicate object keys at any depth (nlohmann would
// silently keep the last one). Errors are DATA_LOSS prefixed with `what`.
Result<nlohmann::json> parse_json_no_duplicates(std::string_view text, const std::string& what);

// A tensor entry of a header that passed validation; `begin` is relative to the data buffer.
struct HeaderEntry {
  TensorInfo info;  // data stays null: the caller owns the mapping
  uint64_t begin = 0;
};

struct ParsedHeader {
  std::vector<HeaderEntry> entries;  // sorted by name
  std::map<std::string, std::string> metadata;
};

// Validates the JSON header of `path` against a data buffer of `buffer_size` bytes:
// entry structure, dtypes, shapes vs byte ranges, and exact tiling of the buffer.
Result<ParsedHeader> parse_header(std::string_view header_text, uint64_t buffer_size, const std::string& path);

// Writes `parts` back to back into a temporary file beside `path`, flushes it to
// disk and renames it over `path`, so readers never see a partial file.
Status write_file_atomically(const std::string& path, const std::vector<std::span<const std::byte>>& parts);

}  // namespace tandem::model::safetensors_internal
