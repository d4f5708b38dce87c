#!/usr/bin/env bash
# What TLS on the router's listeners costs: the same `tandem bench --api both`
# workload (gRPC, then HTTP server-sent events) against one cluster in
# plaintext and one with router.tls_* (the test fixture's self-signed
# certificate), and the TLS / plaintext ratio of output tokens per second.
#   scripts/tls_bench.sh [MODEL_DIR]
# CONCURRENCY / REQUESTS / PROMPT / OUTPUT size the workload.
set -euo pipefail
cd "$(dirname "$0")/.."
TANDEM=${TANDEM:-build/src/cli/tandem}
MODEL=${1:-models/small-mixtral}
source scripts/lib/cluster.sh
cfg=
trap 'stop_cluster; rm -f "${cfg:-}"' EXIT  # never leave a cluster running
[ -f "$MODEL/config.json" ] || "$TANDEM" make-model --preset small-mixtral --out "$MODEL" >/dev/null
declare -A tok_s
for mode in plaintext tls; do
  tls_keys=
  CLIENT_ARGS=
  if [ "$mode" = tls ]; then
    tls_keys=", tls_cert_file: $PWD/tests/fixtures/tls/server.crt, tls_key_file: $PWD/tests/fixtures/tls/server.key"
    CLIENT_ARGS="--tls-ca tests/fixtures/tls/server.crt"
  fi
  cfg=$(mktemp --suffix=.yaml)
  cat >"$cfg" <<YAML
model: {path: $MODEL}
cluster: {attention_nodes: 2, expert_nodes: 2, micro_batches: 2}
router: {listen: 127.0.0.1:54551, http_listen: 127.0.0.1:54580$tls_keys}
attention: {base_port: 54600}
expert: {base_port: 54700}
transport: {backend: ucx}
YAML
  start_cluster "$cfg" 127.0.0.1:54551
  echo "== $mode"
  out=$("$TANDEM" bench --server 127.0.0.1:54551 --http 127.0.0.1:54580 $CLIENT_ARGS --api both \
    --concurrency ${CONCURRENCY:-16} --requests ${REQUESTS:-64} --prompt-tokens ${PROMPT:-128} \
    --output-tokens ${OUTPUT:-64})
  echo "$out"
  # "output throughput X tok/s" of the gRPC pass, then of the HTTP one.
  read -r tok_s[$mode.grpc] tok_s[$mode.http] < <(echo "$out" |
    sed -n 's/.*output throughput \([0-9.]*\) tok\/s.*/\1/p' | paste -sd' ')
  stop_cluster
  rm -f "$cfg"
done
for api in grpc http; do
  awk -v a="$api" -v t="${tok_s[tls.$api]}" -v p="${tok_s[plaintext.$api]}" \
    'BEGIN { printf "%s: TLS %.1f / plaintext %.1f output tok/s = %.3f\n", a, t, p, t / p }'
done
