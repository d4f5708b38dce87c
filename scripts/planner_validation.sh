#!/usr/bin/env bash
# The planner against the CPU cluster: profile this machine with `tandem
# profile`, then for three deployments predict decode throughput with
# `tandem plan --evaluate` and measure it with `tandem bench` on the real
# cluster. Attention runs on CPU ATTENTION_CPUS and experts on EXPERT_CPUS, so
# each side is one "device" as the planner models it.
#   scripts/planner_validation.sh [MODEL_DIR]
# Measured decode throughput = concurrency / mean TPOT (every request decodes
# the same number of tokens at once; prefill is in TTFT, not here).
set -euo pipefail
cd "$(dirname "$0")/.."
TANDEM=${TANDEM:-build/src/cli/tandem}
MODEL=${1:-models/small-mixtral}
ATTENTION_CPUS=${ATTENTION_CPUS:-0}
EXPERT_CPUS=${EXPERT_CPUS:-1}
PROMPT=${PROMPT:-32}
OUTPUT=${OUTPUT:-64}
# "m B" per deployment (one attention node, one expert node).
DEPLOYMENTS=${DEPLOYMENTS:-"1 16|2 16|1 48"}
source scripts/lib/cluster.sh
work=$(mktemp -d)
trap 'stop_cluster; rm -rf "$work"' EXIT  # never leave a cluster running
[ -f "$MODEL/config.json" ] || "$TANDEM" make-model --preset small-mixtral --out "$MODEL" >/dev/null

deployment() {  # m -> YAML on stdout
  cat <<YAML
model: {path: $MODEL}
cluster: {attention_nodes: 1, expert_nodes: 1, micro_batches: $1}
router: {listen: 127.0.0.1:53051}
attention: {base_port: 53100, kv_blocks: 4096, max_running_sequences: 128, cpus: '$ATTENTION_CPUS'}
expert: {base_port: 53200, cpus: '$EXPERT_CPUS'}
transport: {backend: ucx}
YAML
}

deployment 1 >"$work/profile.yaml"
echo "== profiling (one thread, as each pinned node runs)"
taskset -c "$ATTENTION_CPUS" "$TANDEM" profile --config "$work/profile.yaml" --threads 1 --out "$work/measured.yaml" \
  --name dev-cpu | tail -3
context=$((PROMPT + OUTPUT / 2))
printf "\n%-4s %-4s %12s %12s %12s %12s %8s\n" m B "pred TPOT" "meas TPOT" "pred tok/s" "meas tok/s" error
IFS='|' read -ra runs <<<"$DEPLOYMENTS"
for run in "${runs[@]}"; do
  read -r m B <<<"$run"
  deployment "$m" >"$work/d.yaml"
  pred=$("$TANDEM" plan --model "$MODEL" --attention-hw "$work/measured.yaml" --evaluate "$work/d.yaml" \
    --batch "$B" --context "$context")
  pred_tpot=$(sed -n 's/^predicted TPOT \([0-9.]*\) ms.*/\1/p' <<<"$pred")
  READY_TRIES=200 CLUSTER_LOG=/dev/null start_cluster "$work/d.yaml" 127.0.0.1:53051
  meas=$("$TANDEM" bench --server 127.0.0.1:53051 --concurrency "$B" --requests "$B" \
    --prompt-tokens "$PROMPT" --output-tokens "$OUTPUT" 2>/dev/null || true)
  stop_cluster
  meas_tpot=$(awk '$1 == "TPOT" {print $2}' <<<"$meas")
  awk -v m="$m" -v B="$B" -v p="$pred_tpot" -v t="$meas_tpot" 'BEGIN {
    if (t == "" || p == "") { printf "%-4s %-4s measurement failed\n", m, B; exit }
    printf "%-4s %-4s %10.1f ms %10.1f ms %12.1f %12.1f %+7.1f%%\n", m, B, p, t, B * 1000 / p, B * 1000 / t, (t / p - 1) * 100 }'
done
echo "error = measured TPOT / predicted TPOT - 1 (= predicted / measured throughput - 1)"
