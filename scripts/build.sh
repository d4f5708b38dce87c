#!/usr/bin/env bash
# Configures and builds Tandem into ${BUILD_DIR:-build} (Release with debug info).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$BUILD_DIR.configure.log" 2>&1 || {
    cat "$BUILD_DIR.configure.log" >&2; exit 1; }
fi
cmake --build "$BUILD_DIR" -j "$JOBS"
