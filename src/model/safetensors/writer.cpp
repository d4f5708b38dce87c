#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <set>

#include "safetensors/internal.h"

namespace tandem::model {

namespace fs = std::filesystem;
namespace si = safetensors_internal;

namespace {

using TensorRefs = std::vector<const TensorToWrite*>;

Status check_utf8(const std::string& s, const std::string& where, const std::string& what) {
  if (si::find_invalid_utf8(s)) return invalid_argument(where + ": " + what + " is not valid UTF-8");
  return Status::ok();
}

// Refuses anything that would produce a file our own reader (or the reference
// one) rejects, before a byte is written.
Status validate_tensors(const std::vector<TensorToWrite>& tensors, const std::string& where) {
  std::set<std::string_view> seen;
  for (const TensorToWrite& t : tensors) {
    if (t.name.empty()) return invalid_argument(where + ": a tensor has an empty name");
    if (t.name == "__metadata__") return invalid_argument(where + ": '__metadata__' is reserved, not a tensor name");
    TANDEM_RETURN_IF_ERROR(check_utf8(t.name, where, "tensor name '" + t.name + "'"));
    if (!seen.insert(t.name).second) return invalid_argument(where + ": tensor '" + t.name + "' is given twice");
    const std::string typed = std::string(dtype_name(t.dtype)) + " " + si::shape_to_string(t.shape);
    const auto need = si::checked_nbytes(t.dtype, t.shape);
    if (!need) return invalid_argument(where + ": tensor '" + t.name + "': " + typed + " has a negative or too large shape");
    if (t.data.size() != *need)
      return invalid_argument(where + ": tensor '" + t.name + "': data holds " + std::to_string(t.data.size()) +
                              " bytes but " + typed + " needs " + std::to_string(*need));
  }
  return Status::ok();
}

std::span<const std::byte> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// The tensors must already be validated.
Status write_refs(const std::string& path, TensorRefs tensors, const std::map<std::string, std::string>& metadata) {
  for (const auto& [k, v] : metadata) {
    TANDEM_RETURN_IF_ERROR(check_utf8(k, path, "metadata key"));
    TANDEM_RETURN_IF_ERROR(check_utf8(v, path, "metadata value of '" + k + "'"));
  }
  // Largest element first, as the reference writer does: every tensor then starts
  // at a multiple of its element size, so mapped data is naturally aligned.
  std::sort(tensors.begin(), tensors.end(), [](const TensorToWrite* a, const TensorToWrite* b) {
    const size_t sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
    return sa != sb ? sa > sb : a->name < b->name;
  });

  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorToWrite* t : tensors) {
    const uint64_t end = offset + t->data.size();
    header[t->name] = {{"dtype", std::string(dtype_name(t->dtype))},
                       {"shape", t->shape},
                       {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // unreachable after the UTF-8 checks; keep it a Status
    return internal_error(path + ": cannot serialize header: " + e.what());
  }
  text.resize((text.size() + 7) / 8 * 8, ' ');  // data buffer starts 8-byte aligned

  std::string length(8, '\0');
  for (int i = 0; i < 8; ++i) length[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  std::vector<std::span<const std::byte>> parts = {as_bytes(length), as_bytes(text)};
  for (const TensorToWrite* t : tensors) parts.emplace_back(t->data.data(), t->data.size());
  return si::write_file_atomically(path, parts);
}

std::string shard_name(size_t i, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return buf;
}

// Greedy in the caller's order (which is usually layer order, like a state dict):
// a shard closes when the next tensor would push it past the limit, and a tensor
// larger than the limit gets a shard of its own rather than being split.
std::vector<TensorRefs> plan_shards(const std::vector<TensorToWrite>& tensors, size_t max_shard_bytes) {
  std::vector<TensorRefs> shards;
  size_t current = 0;
  for (const TensorToWrite& t : tensors) {
    if (shards.empty() || (!shards.back().empty() && current + t.data.size() > max_shard_bytes)) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(&t);
    current += t.data.size();
  }
  return shards;
}

}  // namespace

Status write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  TANDEM_RETURN_IF_ERROR(validate_tensors(tensors, path));
  TensorRefs refs;
  refs.reserve(tensors.size());
  for (const TensorToWrite& t : tensors) refs.push_back(&t);
  return write_refs(path, std::move(refs), metadata);
}

Status write_checkpoint_weights(const std::string& dir, const std::vector<TensorToWrite>& tensors,
                                size_t max_shard_bytes) {
  TANDEM_RETURN_IF_ERROR(validate_tensors(tensors, dir));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return unavailable(dir + ": cannot create directory: " + ec.message());
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  const fs::path single = fs::path(dir) / si::kSingleFileName;
  const fs::path index = fs::path(dir) / si::kIndexFileName;

  uint64_t total = 0;
  for (const TensorToWrite& t : tensors) total += t.data.size();
  if (total <= max_shard_bytes) {
    TANDEM_RETURN_IF_ERROR(write_safetensors(single.string(), tensors, metadata));
    // A leftover index would make open_dir ignore the file just written.
    fs::remove(index, ec);
    return Status::ok();
  }

  const std::vector<TensorRefs> shards = plan_shards(tensors, max_shard_bytes);
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string name = shard_name(i, shards.size());
    TANDEM_RETURN_IF_ERROR(write_refs((fs::path(dir) / name).string(), shards[i], metadata));
    for (const TensorToWrite* t : shards[i]) weight_map[t->name] = name;
  }
  // The index goes last: until it exists, the directory does not claim to be sharded.
  const nlohmann::json j = {{"metadata", {{"total_size", total}}}, {"weight_map", std::move(weight_map)}};
  const std::string text = j.dump(2) + "\n";
  TANDEM_RETURN_IF_ERROR(si::write_file_atomically(index.string(), {as_bytes(text)}));
  // transformers prefers model.safetensors over an index, so a stale one must go.
  fs::remove(single, ec);
  return Status::ok();
}

}  // namespace tandem::model
