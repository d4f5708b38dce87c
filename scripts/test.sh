#!/usr/bin/env bash
# README command two: install what is missing, build, run the whole test suite.
# The last line printed is ctest's summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
cd "${BUILD_DIR:-build}"
log=$(mktemp)
set +e
ctest --output-on-failure -j "${JOBS:-$(nproc)}" --timeout 600 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# ctest lists skipped tests after its summary; repeat the summary so it comes last.
grep -E "tests passed|tests failed" "$log" | tail -n 1
rm -f "$log"
exit "$rc"
