#!/usr/bin/env bash
# README command one: install what is missing, build, generate the small demo
# model (once) and stream a completion from it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh >/dev/null
TANDEM=${BUILD_DIR:-build}/src/cli/tandem
MODEL=${MODEL_DIR:-models/small-mixtral}
if [ ! -f "$MODEL/config.json" ]; then
  "$TANDEM" make-model --preset small-mixtral --seed 0 --out "$MODEL"
fi
"$TANDEM" generate --model "$MODEL" --prompt "${PROMPT:-The weather in the mountains today}" \
  --max-tokens "${MAX_TOKENS:-48}" --temperature 0.8 --top-p 0.95 --seed 1
