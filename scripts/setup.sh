#!/usr/bin/env bash
# Installs the Debian packages Tandem builds against. Idempotent and quiet: it
# only calls apt when something is missing, and prints only on failure.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libspdlog-dev libfmt-dev libucx-dev ucx-utils libyaml-cpp-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libcli11-dev libpcre2-dev libicu-dev libopenblas-dev
  libcpp-httplib-dev libssl-dev zlib1g-dev libbrotli-dev  # router.http_listen (OpenAI-compatible API)
  libopenmpi-dev openmpi-bin  # MPI_Alltoallv baseline of transport_bench, optional there
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
log=$(mktemp)
if ! { $SUDO apt-get update -qq && \
       DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  echo "setup.sh: installing ${missing[*]} failed:" >&2
  tail -n 30 "$log" >&2
  rm -f "$log"
  exit 1
fi
rm -f "$log"
