# Shared by the bench scripts: start a local cluster from a deployment YAML
# and wait until its router answers; stop it. Source after setting TANDEM.
#   start_cluster CONFIG ROUTER_ADDRESS   (sets CLUSTER_PID; READY_TRIES x 0.3 s at most;
#                                          CLIENT_ARGS, e.g. --tls-ca FILE, go to the readiness probe)
#   stop_cluster                          (SIGINT: the router drains, the nodes stop)
# The cluster's log goes to CLUSTER_LOG (default: this script's stderr).
# The caller's EXIT trap should call stop_cluster, so no cluster is left running.
CLUSTER_PID=

start_cluster() {
  # Without CLUSTER_LOG the cluster shares this script's stderr (not
  # 2>/dev/stderr: reopening it truncates a file the caller redirected to).
  if [ -n "${CLUSTER_LOG:-}" ]; then
    "$TANDEM" serve --config "$1" >/dev/null 2>"$CLUSTER_LOG" &
  else
    "$TANDEM" serve --config "$1" >/dev/null &
  fi
  CLUSTER_PID=$!
  local _
  for _ in $(seq "${READY_TRIES:-100}"); do
    "$TANDEM" bench --server "$2" ${CLIENT_ARGS:-} --requests 1 --concurrency 1 --output-tokens 2 --seed 1 >/dev/null 2>&1 && return 0
    kill -0 "$CLUSTER_PID" 2>/dev/null || { echo "the cluster of $1 exited before it was ready" >&2; CLUSTER_PID=; return 1; }
    sleep 0.3
  done
  echo "the cluster of $1 did not answer on $2" >&2
  return 1
}

stop_cluster() {
  [ -n "$CLUSTER_PID" ] || return 0
  kill -INT "$CLUSTER_PID" 2>/dev/null || true
  wait "$CLUSTER_PID" 2>/dev/null || true
  CLUSTER_PID=
}
