// The checkpoint a generation benchmark runs: small-mixtral in `dir`, written
// from the make-model preset the first time (random weights, real format).
#pragma once

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "tandem/model/checkpoint.h"
#include "tandem/model/make_model.h"
#include "tandem/model/weights.h"

namespace tandem::bench {

struct BenchModel {
  model::Checkpoint ck;
  std::unique_ptr<model::ModelWeights> weights;
};

inline Result<BenchModel> open_small_mixtral(const std::string& dir) {
  if (!std::filesystem::exists(dir + "/config.json")) {
    std::fprintf(stderr, "making small-mixtral in %s\n", dir.c_str());
    TANDEM_RETURN_IF_ERROR(model::make_model({.preset = "small-mixtral", .seed = 0, .out_dir = dir}));
  }
  BenchModel m;
  TANDEM_ASSIGN_OR_RETURN(m.ck, model::Checkpoint::open(dir));
  TANDEM_ASSIGN_OR_RETURN(m.weights, model::ModelWeights::load(m.ck.config, *m.ck.weights));
  return m;
}

}  // namespace tandem::bench
