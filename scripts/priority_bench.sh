#!/usr/bin/env bash
# Request priority under load: a cluster whose attention node runs at most
# MAX_RUNNING sequences at a time, CONCURRENCY requests in flight, every
# URGENT_EVERY-th at priority -1; `tandem bench` prints the urgent requests'
# TTFT / E2E against the rest of the same run (the baseline).
#   scripts/priority_bench.sh [model dir]
set -euo pipefail
cd "$(dirname "$0")/.."
TANDEM=${TANDEM:-build/src/cli/tandem}
MODEL=${1:-models/small-mixtral}
source scripts/lib/cluster.sh
cfg=$(mktemp --suffix=.yaml)
trap 'stop_cluster; rm -f "$cfg"' EXIT  # never leave a cluster running
[ -f "$MODEL/config.json" ] || "$TANDEM" make-model --preset small-mixtral --out "$MODEL" >/dev/null
cat >"$cfg" <<YAML
model: {path: $MODEL}
cluster: {attention_nodes: 1, expert_nodes: 2, micro_batches: 2}
router: {listen: 127.0.0.1:53851}
attention: {base_port: 53900, max_running_sequences: ${MAX_RUNNING:-4}}
expert: {base_port: 53950}
transport: {backend: ucx}
YAML
start_cluster "$cfg" 127.0.0.1:53851
"$TANDEM" bench --server 127.0.0.1:53851 --concurrency ${CONCURRENCY:-16} --requests ${REQUESTS:-48} \
  --prompt-tokens ${PROMPT:-64} --output-tokens ${OUTPUT:-32} --urgent-every ${URGENT_EVERY:-4}
