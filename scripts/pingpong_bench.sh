#!/usr/bin/env bash
# Ping-pong effect: decode throughput of the same deployment at m = 1, 2, 3,
# measured with `tandem bench` against a real local cluster.
#   scripts/pingpong_bench.sh [MODEL_DIR] [ATTENTION_NODES] [EXPERT_NODES]
# TRANSPORTS="tcp ucx" (default) picks the data planes to compare;
# ATTENTION_CPUS / EXPERT_CPUS (e.g. 0 and 1) pin the roles (attention.cpus, expert.cpus).
# DEVICE=cuda puts both roles on the GPU(s) (cluster.device); MS="1 2 3" the m values.
set -euo pipefail
cd "$(dirname "$0")/.."
TANDEM=${TANDEM:-build/src/cli/tandem}
MODEL=${1:-models/small-mixtral}
NA=${2:-1}
NE=${3:-2}
source scripts/lib/cluster.sh
cfg=
trap 'stop_cluster; rm -f "${cfg:-}"' EXIT  # never leave a cluster running
[ -f "$MODEL/config.json" ] || "$TANDEM" make-model --preset small-mixtral --out "$MODEL" >/dev/null
for transport in ${TRANSPORTS:-tcp ucx}; do
for m in ${MS:-1 2 3}; do
  cfg=$(mktemp --suffix=.yaml)
  cat >"$cfg" <<YAML
model: {path: $MODEL}
cluster: {attention_nodes: $NA, expert_nodes: $NE, micro_batches: $m, device: ${DEVICE:-cpu}}
router: {listen: 127.0.0.1:52051}
attention: {base_port: 52100, kv_blocks: 2048, max_running_sequences: 64${ATTENTION_CPUS:+, cpus: '$ATTENTION_CPUS'}}
expert: {base_port: 52200${EXPERT_CPUS:+, cpus: '$EXPERT_CPUS'}}
transport: {backend: $transport}
YAML
  start_cluster "$cfg" 127.0.0.1:52051
  echo "== transport=$transport m=$m (n_a=$NA, n_e=$NE, device ${DEVICE:-cpu})"
  "$TANDEM" bench --server 127.0.0.1:52051 --concurrency ${CONCURRENCY:-16} --requests ${REQUESTS:-32} \
    --prompt-tokens ${PROMPT:-32} --output-tokens ${OUTPUT:-64} | grep -E "throughput|TPOT|TTFT"
  # Where the attention nodes' step time went (tandem status).
  "$TANDEM" status --config "$cfg" | grep -E "^(node|attention|expert)" || true
  stop_cluster
  rm -f "$cfg"
done
done
