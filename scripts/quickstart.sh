#!/usr/bin/env bash
# README command one: install what is missing, build, generate the small demo
# model (once), start the local cluster of configs/local.yaml (2 attention
# nodes, 2 expert nodes, 2 micro-batches, router on 127.0.0.1:50051), stream a
# completion through it, and stop it. KEEP_SERVING=1 leaves it running.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh >/dev/null
TANDEM=${BUILD_DIR:-build}/src/cli/tandem
MODEL=models/small-mixtral   # the model configs/local.yaml serves
if [ ! -f "$MODEL/config.json" ]; then
  "$TANDEM" make-model --preset small-mixtral --seed 0 --out "$MODEL"
fi
"$TANDEM" serve --config configs/local.yaml &
serve=$!
trap 'kill -INT $serve 2>/dev/null; wait $serve 2>/dev/null || true' EXIT
for _ in $(seq 300); do
  "$TANDEM" client --prompt x --max-tokens 1 >/dev/null 2>&1 && break
  kill -0 $serve 2>/dev/null || { echo "quickstart: the cluster failed to start" >&2; exit 1; }
  sleep 0.2
done
"$TANDEM" client --prompt "${PROMPT:-The weather in the mountains today}" --max-tokens "${MAX_TOKENS:-48}" \
  --temperature 0.8 --top-p 0.95 --seed 1
if [ "${KEEP_SERVING:-0}" = 1 ]; then
  echo "serving gRPC on 127.0.0.1:50051 and the OpenAI-compatible API on http://127.0.0.1:8000 (Ctrl-C to stop); try:"
  echo "  $TANDEM client --prompt 'Hello'"
  echo "  curl -s http://127.0.0.1:8000/v1/completions -d '{\"prompt\": \"Hello\", \"max_tokens\": 16}'"
  wait $serve
fi
