// Reading and writing HuggingFace safetensors files and checkpoint directories.
// Files are memory-mapped and fully validated before any tensor is handed out:
// a corrupt, truncated or inconsistent file is an error naming the file and the
// tensor, never a crash or a read past the end.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/common/dtype.h"
#include "tandem/common/status.h"

namespace tandem::model {

// A tensor inside a mapped file. `data` points into the mapping (no alignment
// guarantee) and stays valid while the owning SafetensorsFile/WeightStore lives.
struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;
  size_t nbytes = 0;
  std::string file;  // path of the file holding it

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

class SafetensorsFile {
 public:
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // Maps and validates `path`: header length bound, UTF-8 JSON object, known dtypes,
  // shapes that match byte ranges, ranges inside the file, non-overlapping and
  // tiling the data buffer, no duplicate names.
  // Errors: NOT_FOUND (no such file), DATA_LOSS (corrupt or truncated), UNIMPLEMENTED
  // (a dtype the format defines but DType lacks, e.g. F8_E4M3).
  static Result<std::unique_ptr<SafetensorsFile>> open(const std::string& path);

  const std::string& path() const { return path_; }
  const TensorInfo* find(std::string_view name) const;
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // sorted by name
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All weights of a checkpoint directory: model.safetensors, or the shards named by
// model.safetensors.index.json (each shard validated; every tensor the index
// names must be in the shard it names). The index wins when both exist. A name
// found in two shards is refused.
class WeightStore {
 public:
  static Result<std::unique_ptr<WeightStore>> open_dir(const std::string& dir);

  const TensorInfo* find(std::string_view name) const;
  std::vector<std::string> names() const;  // sorted
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*, std::less<>> index_;
};

// A tensor to write; `data` holds exactly numel * dtype_size bytes.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<std::byte> data;
};

// Writes one safetensors file (header padded to 8 bytes, tensors sorted by name).
Status write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                         const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// Writes `tensors` into dir as model.safetensors, or, when the total exceeds
// max_shard_bytes, as model-0000i-of-0000n.safetensors plus model.safetensors.index.json.
// Shards are filled in the order given; a tensor is never split, and one larger than
// the limit gets a shard of its own. The other layout's model.safetensors or index
// left from an earlier write is removed, since readers would prefer it.
Status write_checkpoint_weights(const std::string& dir, const std::vector<TensorToWrite>& tensors,
                                size_t max_shard_bytes = size_t{4} << 30);

}  // namespace tandem::model
