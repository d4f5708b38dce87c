#include <cstdio>
#include <string>

#include "commands.h"
#include "tandem/model/make_model.h"

namespace tandem::cli {

void register_make_model(CLI::App& app) {
  static model::MakeModelOptions opts;
  static std::string dtype = "BF16";
  std::string presets;
  for (const auto& p : model::model_presets()) presets += "\n  " + p.name + ": " + p.description;
  auto* cmd = add_command(app, "make-model", "Write a random-weight checkpoint in HuggingFace layout", [] {
    auto t = parse_dtype(dtype);
    if (!t) {
      std::fprintf(stderr, "tandem make-model: --dtype must be F32, F16 or BF16, got '%s'\n", dtype.c_str());
      return 2;
    }
    opts.dtype = *t;
    Status st = model::make_model(opts);
    if (!st.is_ok()) {
      std::fprintf(stderr, "tandem make-model: %s\n", st.to_string().c_str());
      return 1;
    }
    std::printf("wrote %s (preset %s, seed %llu)\n", opts.out_dir.c_str(), opts.preset.c_str(),
                static_cast<unsigned long long>(opts.seed));
    return 0;
  });
  cmd->add_option("--preset", opts.preset, "Model preset:" + presets)->capture_default_str();
  cmd->add_option("--seed", opts.seed, "Random seed")->capture_default_str();
  cmd->add_option("--out", opts.out_dir, "Output directory")->required();
  cmd->add_option("--dtype", dtype, "Weight dtype: BF16, F16 or F32")->capture_default_str();
}

}  // namespace tandem::cli
