#include <filesystem>
#include <fstream>
#include <sstream>

#include "safetensors/internal.h"

namespace tandem::model {

namespace fs = std::filesystem;
namespace si = safetensors_internal;

namespace {

Result<std::string> read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found(path + ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return data_loss(path + ": read error");
  return ss.str();
}

// weight_map of the index: tensor name -> shard file name.
Result<std::map<std::string, std::string>> read_weight_map(const std::string& index_path) {
  TANDEM_ASSIGN_OR_RETURN(std::string text, read_text_file(index_path));
  TANDEM_ASSIGN_OR_RETURN(nlohmann::json j, si::parse_json_no_duplicates(text, index_path));
  if (!j.is_object()) return data_loss(index_path + ": not a JSON object");
  if (j.contains("metadata") && !j["metadata"].is_object() && !j["metadata"].is_null())
    return data_loss(index_path + ": \"metadata\" is not an object");
  if (!j.contains("weight_map") || !j["weight_map"].is_object())
    return data_loss(index_path + ": missing \"weight_map\" object");

  std::map<std::string, std::string> out;
  for (const auto& [name, shard] : j["weight_map"].items()) {
    if (!shard.is_string()) return data_loss(index_path + ": tensor '" + name + "': shard name is not a string");
    const auto& s = shard.get_ref<const std::string&>();
    // The index must not reach outside the checkpoint directory.
    if (s.empty() || s.find('/') != std::string::npos || s.find('\\') != std::string::npos ||
        s.find("..") != std::string::npos)
      return invalid_argument(index_path + ": tensor '" + name + "': shard name '" + s +
                              "' is not a plain file name in the checkpoint directory");
    out.emplace(name, s);
  }
  return out;
}

}  // namespace

Result<std::unique_ptr<WeightStore>> WeightStore::open_dir(const std::string& dir) {
  auto store = std::unique_ptr<WeightStore>(new WeightStore());
  store->dir_ = dir;
  const fs::path index_path = fs::path(dir) / si::kIndexFileName;
  const fs::path single_path = fs::path(dir) / si::kSingleFileName;
  std::error_code ec;

  std::map<std::string, std::string> weight_map;
  if (fs::exists(index_path, ec)) {
    TANDEM_ASSIGN_OR_RETURN(weight_map, read_weight_map(index_path.string()));
    std::map<std::string, size_t> shard_slot;  // each shard is mapped once
    for (const auto& [name, shard] : weight_map) {
      if (shard_slot.count(shard)) continue;
      const fs::path shard_path = fs::path(dir) / shard;
      if (!fs::exists(shard_path, ec))
        return not_found(index_path.string() + ": shard '" + shard + "' (holding tensor '" + name +
                         "') does not exist in " + dir);
      TANDEM_ASSIGN_OR_RETURN(auto file, SafetensorsFile::open(shard_path.string()));
      shard_slot.emplace(shard, store->files_.size());
      store->files_.push_back(std::move(file));
    }
    for (const auto& [name, shard] : weight_map) {
      if (!store->files_[shard_slot.at(shard)]->find(name))
        return not_found(index_path.string() + ": tensor '" + name + "' is mapped to shard '" + shard +
                         "' but that shard has no such tensor");
    }
  } else if (fs::exists(single_path, ec)) {
    TANDEM_ASSIGN_OR_RETURN(auto file, SafetensorsFile::open(single_path.string()));
    store->files_.push_back(std::move(file));
  } else {
    return not_found(dir + ": no " + std::string(si::kSingleFileName) + " or " + std::string(si::kIndexFileName) +
                     " in this directory");
  }

  // Every tensor of every shard is served, also ones the index forgot to list;
  // the same name in two shards has no right answer, so it is refused.
  for (const auto& file : store->files_) {
    for (const TensorInfo& t : file->tensors()) {
      auto [it, inserted] = store->index_.emplace(t.name, &t);
      if (!inserted)
        return data_loss(dir + ": tensor '" + t.name + "' is in both " + fs::path(it->second->file).filename().string() +
                         " and " + fs::path(t.file).filename().string());
    }
  }
  return store;
}

const TensorInfo* WeightStore::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, t] : index_) out.push_back(name);
  return out;
}

}  // namespace tandem::model
