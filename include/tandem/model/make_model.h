// Random-weight checkpoints in exact HuggingFace layout (config.json,
// model.safetensors, tokenizer.json, tokenizer_config.json with a chat template,
// generation_config.json), for tests, demos and benchmarks where no hub is
// reachable. Weights are scaled so activations stay O(1) through every layer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tandem/common/dtype.h"
#include "tandem/common/status.h"

namespace tandem::model {

struct MakeModelOptions {
  std::string preset = "tiny-mixtral";  // see model_presets()
  uint64_t seed = 0;
  std::string out_dir;
  DType dtype = DType::kBF16;
  size_t max_shard_bytes = size_t{2} << 30;  // shard above this, as save_pretrained does
};

struct PresetInfo {
  std::string name;
  std::string description;
};

std::vector<PresetInfo> model_presets();

Status make_model(const MakeModelOptions& options);

// ChatML template shipped with generated models.
std::string_view default_chat_template();

}  // namespace tandem::model
