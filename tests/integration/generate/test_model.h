// Shared helpers: a generated tiny checkpoint in a temp dir, loaded once per preset.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tandem/engine/model_runner.h"
#include "tandem/model/checkpoint.h"
#include "tandem/model/make_model.h"
#include "tandem/model/weights.h"

namespace tandem::testing {

struct LoadedModel {
  std::string dir;
  model::Checkpoint ck;
  std::unique_ptr<model::ModelWeights> weights;
};

// Directories a test process created; removed when it exits.
struct TempDirs {
  std::vector<std::string> dirs;
  ~TempDirs() {
    std::error_code ec;
    for (const auto& d : dirs) std::filesystem::remove_all(d, ec);
  }
};
inline TempDirs& temp_dirs() {
  static TempDirs t;
  return t;
}

inline std::string fresh_dir(const std::string& name) {
  auto d = std::filesystem::path(::testing::TempDir()) / ("tandem_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  temp_dirs().dirs.push_back(d.string());
  return d.string();
}

// Generates (once per process) and loads a preset model.
inline const LoadedModel& tiny_model(const std::string& preset, DType dtype = DType::kF32, uint64_t seed = 0) {
  static std::map<std::string, std::unique_ptr<LoadedModel>> cache;
  const std::string key = preset + "/" + std::string(dtype_name(dtype)) + "/" + std::to_string(seed);
  auto& slot = cache[key];
  if (!slot) {
    auto m = std::make_unique<LoadedModel>();
    m->dir = fresh_dir(preset + "_" + std::string(dtype_name(dtype)) + "_" + std::to_string(seed));
    model::MakeModelOptions o;
    o.preset = preset;
    o.seed = seed;
    o.out_dir = m->dir;
    o.dtype = dtype;
    Status st = model::make_model(o);
    if (!st.is_ok()) throw std::runtime_error(st.to_string());
    auto ck = model::Checkpoint::open(m->dir);
    if (!ck.is_ok()) throw std::runtime_error(ck.status().to_string());
    m->ck = std::move(ck).value();
    auto w = model::ModelWeights::load(m->ck.config, *m->ck.weights);
    if (!w.is_ok()) throw std::runtime_error(w.status().to_string());
    m->weights = std::move(w).value();
    slot = std::move(m);
  }
  return *slot;
}

// Logits of one sequence run through the paged forward in a single prefill:
// [tokens, vocab] when all_rows, else [1, vocab] for the last token.
inline std::vector<float> prefill_logits(const model::ModelConfig& c, const model::ModelWeights& w,
                                         const std::vector<int32_t>& tokens, bool all_rows) {
  constexpr int64_t kBlock = 16;
  const int64_t blocks = (static_cast<int64_t>(tokens.size()) + kBlock - 1) / kBlock;
  auto cache = engine::KvCache::create({c.num_layers, blocks, kBlock, c.num_kv_heads, c.head_dim}, size_t{1} << 30);
  if (!cache.is_ok()) throw std::runtime_error(cache.status().to_string());
  engine::ModelRunner runner(c, w, cache->get());
  engine::SequenceKv kv;
  if (!kv.reserve(**cache, static_cast<int64_t>(tokens.size())).is_ok()) throw std::runtime_error("KV reserve");
  engine::ForwardBatch b;
  for (size_t t = 0; t < tokens.size(); ++t) {
    b.tokens.push_back(tokens[t]);
    b.positions.push_back(static_cast<int32_t>(t));
    b.seq_of_token.push_back(0);
    b.slots.push_back(kv.slot(static_cast<int64_t>(t), kBlock));
    b.ctx_len.push_back(static_cast<int32_t>(t + 1));
    if (all_rows || t + 1 == tokens.size()) b.logits_rows.push_back(static_cast<int32_t>(t));
  }
  b.block_tables = kv.blocks();
  b.max_blocks_per_seq = static_cast<int64_t>(kv.blocks().size());
  std::vector<float> logits;
  runner.forward(b, logits);
  return logits;
}

}  // namespace tandem::testing
