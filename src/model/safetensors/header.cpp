#include <algorithm>
#include <array>

#include "safetensors/internal.h"

namespace tandem::model::safetensors_internal {

namespace {

using nlohmann::json;

// Spelled in the format but without a DType of ours: such files are valid, we just
// cannot load them yet, which is a different message from a corrupt dtype.
constexpr std::array<std::string_view, 12> kKnownUnsupportedDtypes = {
    "U16", "U32", "U64", "C64", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ",
    "F4",  "F6_E2M3", "F6_E3M2"};

struct Entry {
  HeaderEntry header;
  uint64_t end = 0;
};

class EntryParser {
 public:
  EntryParser(const std::string& path, const std::string& name) : path_(path), name_(name) {}

  Result<Entry> parse(const json& v) const {
    if (!v.is_object()) return corrupt(std::string("entry is a JSON ") + v.type_name() + ", not an object");
    for (const char* field : {"dtype", "shape", "data_offsets"})
      if (!v.contains(field)) return corrupt(std::string("missing \"") + field + "\"");

    Entry e;
    e.header.info.name = name_;
    e.header.info.file = path_;
    TANDEM_ASSIGN_OR_RETURN(e.header.info.dtype, parse_dtype_field(v["dtype"]));
    TANDEM_ASSIGN_OR_RETURN(e.header.info.shape, parse_shape(v["shape"]));

    const json& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      return corrupt("data_offsets " + off.dump() + " are not two non-negative integers");
    const uint64_t begin = off[0].get<uint64_t>();
    const uint64_t end = off[1].get<uint64_t>();
    const std::string range = "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "]";
    if (begin > end) return corrupt(range + " end before they begin");

    const auto& info = e.header.info;
    const auto need = checked_nbytes(info.dtype, info.shape);
    const std::string typed = std::string(dtype_name(info.dtype)) + " " + shape_to_string(info.shape);
    if (!need) return corrupt(typed + " is too large (byte count overflows)");
    if (end - begin != *need)
      return corrupt(range + " hold " + std::to_string(end - begin) + " bytes but " + typed + " needs " +
                     std::to_string(*need));
    e.header.begin = begin;
    e.header.info.nbytes = static_cast<size_t>(end - begin);
    e.end = end;
    return e;
  }

 private:
  Status corrupt(const std::string& what) const { return data_loss(path_ + ": tensor '" + name_ + "': " + what); }

  Result<DType> parse_dtype_field(const json& d) const {
    if (!d.is_string()) return corrupt("dtype " + d.dump() + " is not a string");
    const auto& s = d.get_ref<const std::string&>();
    if (auto t = parse_dtype(s)) return *t;
    if (std::find(kKnownUnsupportedDtypes.begin(), kKnownUnsupportedDtypes.end(), s) != kKnownUnsupportedDtypes.end())
      return unimplemented(path_ + ": tensor '" + name_ + "': dtype '" + s + "' is not supported");
    return corrupt("unknown dtype '" + s + "'");
  }

  Result<std::vector<int64_t>> parse_shape(const json& s) const {
    if (!s.is_array()) return corrupt("shape " + s.dump() + " is not an array");
    std::vector<int64_t> shape;
    shape.reserve(s.size());
    for (const json& d : s) {
      if (d.is_number_integer() && !d.is_number_unsigned())
        return corrupt("shape " + s.dump() + " has a negative dimension");
      if (!d.is_number_unsigned()) return corrupt("shape " + s.dump() + " has a dimension that is not an integer");
      const uint64_t u = d.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return corrupt("shape " + s.dump() + " has a dimension out of range");
      shape.push_back(static_cast<int64_t>(u));
    }
    return shape;
  }

  const std::string& path_;
  const std::string& name_;
};

Result<std::map<std::string, std::string>> parse_metadata(const json& m, const std::string& path) {
  std::map<std::string, std::string> out;
  if (m.is_null()) return out;
  if (!m.is_object()) return data_loss(path + ": __metadata__ is a JSON " + m.type_name() + ", not an object");
  for (const auto& [k, v] : m.items()) {
    if (!v.is_string()) return data_loss(path + ": __metadata__ value of '" + k + "' is not a string");
    out.emplace(k, v.get<std::string>());
  }
  return out;
}

std::string describe(const Entry& e) {
  return "'" + e.header.info.name + "' [" + std::to_string(e.header.begin) + ", " + std::to_string(e.end) + "]";
}

// The reference reader requires the tensors, sorted by offsets, to cover the
// data buffer exactly; anything else means the file is corrupt or truncated.
Status check_tiling(std::vector<Entry>& entries, uint64_t buffer_size, const std::string& path) {
  std::vector<const Entry*> order;
  order.reserve(entries.size());
  for (const Entry& e : entries) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    if (a->header.begin != b->header.begin) return a->header.begin < b->header.begin;
    if (a->end != b->end) return a->end < b->end;
    return a->header.info.name < b->header.info.name;
  });
  uint64_t covered = 0;
  const Entry* prev = nullptr;
  for (const Entry* e : order) {
    if (e->header.begin < covered)
      return data_loss(path + ": tensors " + describe(*prev) + " and " + describe(*e) + " overlap");
    if (e->header.begin > covered) {
      const std::string gap = std::to_string(e->header.begin - covered) + " bytes";
      if (!prev) return data_loss(path + ": gap of " + gap + " before the first tensor " + describe(*e));
      return data_loss(path + ": gap of " + gap + " between tensors " + describe(*prev) + " and " + describe(*e));
    }
    covered = e->end;
    prev = e;
  }
  if (covered != buffer_size)
    return data_loss(path + ": " + std::to_string(buffer_size - covered) +
                     " bytes of trailing data after the last tensor (tensors end at byte " + std::to_string(covered) +
                     " of a " + std::to_string(buffer_size) + "-byte data buffer)");
  return Status::ok();
}

}  // namespace

Result<ParsedHeader> parse_header(std::string_view header_text, uint64_t buffer_size, const std::string& path) {
  if (auto bad = find_invalid_utf8(header_text))
    return data_loss(path + ": header is not valid UTF-8 (bad byte at header offset " + std::to_string(*bad) + ")");
  TANDEM_ASSIGN_OR_RETURN(json j, parse_json_no_duplicates(header_text, path + ": header"));
  if (!j.is_object()) return data_loss(path + ": header is a JSON " + std::string(j.type_name()) + ", not an object");

  ParsedHeader out;
  std::vector<Entry> entries;
  entries.reserve(j.size());
  for (const auto& [name, value] : j.items()) {
    if (name == "__metadata__") {
      TANDEM_ASSIGN_OR_RETURN(out.metadata, parse_metadata(value, path));
      continue;
    }
    TANDEM_ASSIGN_OR_RETURN(Entry e, EntryParser(path, name).parse(value));
    if (e.end > buffer_size)
      return data_loss(path + ": tensor '" + name + "': data_offsets [" + std::to_string(e.header.begin) + ", " +
                       std::to_string(e.end) + "] run past the end of the " + std::to_string(buffer_size) +
                       "-byte data buffer (file truncated?)");
    entries.push_back(std::move(e));
  }
  TANDEM_RETURN_IF_ERROR(check_tiling(entries, buffer_size, path));

  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.header.info.name < b.header.info.name; });
  out.entries.reserve(entries.size());
  for (Entry& e : entries) out.entries.push_back(std::move(e.header));
  return out;
}

}  // namespace tandem::model::safetensors_internal
