#!/usr/bin/env bash
# Prefix caching on a real local cluster: the same requests, every prompt
# starting with the same SHARED tokens (a system prompt), served with prefix
# caching off, on without the router's prefix affinity, and on with it.
# Reports `tandem bench`'s TTFT and throughput and each node's prefix hit share.
#   scripts/prefix_cache_bench.sh [MODEL_DIR] [ATTENTION_NODES] [EXPERT_NODES]
# PROMPT / SHARED / PREFIX_GROUPS / OUTPUT / CONCURRENCY / REQUESTS size the workload:
# PREFIX_GROUPS=1, one system prompt for all; PREFIX_GROUPS=16, as many conversations, each
# with its own history (where the router's prefix affinity matters).
set -euo pipefail
cd "$(dirname "$0")/.."
TANDEM=${TANDEM:-build/src/cli/tandem}
MODEL=${1:-models/small-mixtral}
NA=${2:-2}
NE=${3:-2}
source scripts/lib/cluster.sh
cfg=
trap 'stop_cluster; rm -f "${cfg:-}"' EXIT  # never leave a cluster running
[ -f "$MODEL/config.json" ] || "$TANDEM" make-model --preset small-mixtral --out "$MODEL" >/dev/null
for setting in "off:false:false" "on, no affinity:true:false" "on, affinity:true:true"; do
  IFS=: read -r name caching affinity <<<"$setting"
  cfg=$(mktemp --suffix=.yaml)
  cat >"$cfg" <<YAML
model: {path: $MODEL}
cluster: {attention_nodes: $NA, expert_nodes: $NE, micro_batches: 2}
router: {listen: 127.0.0.1:53551, prefix_affinity: $affinity}
attention: {base_port: 53600, kv_blocks: 2048, prefix_caching: $caching}
expert: {base_port: 53700}
transport: {backend: ucx}
YAML
  start_cluster "$cfg" 127.0.0.1:53551
  echo "== prefix caching $name (n_a=$NA, n_e=$NE)"
  "$TANDEM" bench --server 127.0.0.1:53551 --concurrency ${CONCURRENCY:-4} --requests ${REQUESTS:-32} \
    --prompt-tokens ${PROMPT:-512} --shared-prefix ${SHARED:-448} --prefix-groups ${PREFIX_GROUPS:-1} --output-tokens ${OUTPUT:-8} | grep -E "throughput|TTFT|E2E"
  "$TANDEM" status --config "$cfg" | grep -E "^(node|attention)" || true
  stop_cluster
  rm -f "$cfg"
done
