#!/usr/bin/env bash
# The whole GPU check in one device call, from the repository root of the GPU
# machine: unpack the pack that scripts/gpu_pack.sh built here, show the GPU, run
# the gpu-labelled tests, the CUDA kernel benchmarks and the HF parity check with
# transformers on the GPU, then print a short table last.
#
#   here:        scripts/gpu_pack.sh
#   device tool: run  command "bash scripts/gpu_check.sh"  carry ["gpu-pack"]  timeout_s 540
#
# Full logs go to $OUT (at most 8 files, which the device tool returns):
# summary.txt env.log gpu_tests.log gpu_tests.xml benchmarks.log
# cuda_kernels_bench.csv hf_parity.log hf_fixtures_gpu.tar.gz.
#
# Every step runs under its own time limit, cut to what is left of
# GPU_CHECK_BUDGET (default 450 s), so the script ends inside 8 minutes whatever
# hangs. On a machine without a GPU each GPU step says "skipped: no GPU" (the
# binaries still run, to prove they load from the pack) and the script exits 0.
# Exit status: 1 when a step failed or timed out, else 0.
#
# Libraries: the packed binaries run through the pack's bin/ wrappers, which put
# the pack's lib/ (then TANDEM_CUDA_LIBS, the CUDA directories found in setup)
# on LD_LIBRARY_PATH for that process alone. This script's own environment, and
# so python3 and torch, keep the machine's libraries.
#
# Knobs: OUT, GPU_CHECK_BUDGET, BENCH_ARGS (e.g. "--quick"), BENCH_REPEAT (0 or
# 1: a second, --quick bench run to show run-to-run spread), PACK_ARCHIVE,
# E2E_MODEL.#
# STEPS (default "tests cluster generate kernels ipc e2e profile parity", in this order
# of value) picks the steps, e.g. STEPS="cluster e2e" for a rerun.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

OUT=${OUT:-/tmp/gpucheck}
mkdir -p "$OUT"
BUDGET=${GPU_CHECK_BUDGET:-450}
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET))
PACK_ARCHIVE=${PACK_ARCHIVE:-gpu-pack/tandem-gpu-pack.tar.xz}
PACK=${TMPDIR:-/tmp}/tandem-gpu-pack
WORK=${TMPDIR:-/tmp}/tandem-gpu-check
BENCH_ARGS=${BENCH_ARGS:-}
BENCH_REPEAT=${BENCH_REPEAT:-1}
export PYTHONUNBUFFERED=1

NAMES=() STATUSES=() SECONDS_TAKEN=() DETAILS=()
record() { NAMES+=("$1"); STATUSES+=("$2"); SECONDS_TAKEN+=("$3"); DETAILS+=("$4"); }
banner() { printf '\n===== %s (%ds into the check) =====\n' "$1" "$(($(date +%s) - T0))"; }

# run_timed LIMIT LOG FILTER CMD...: CMD under min(LIMIT, what the budget has
# left), its whole output appended to LOG and the lines matching FILTER shown.
# Sets RC (124 or 137: killed at the limit; 125: no time left) and SECS.
run_timed() {
  local limit=$1 log=$2 filter=$3
  shift 3
  local left=$((DEADLINE - $(date +%s) - 5))
  ((limit > left)) && limit=$left
  if ((limit < 10)); then
    echo "(not run: the ${BUDGET}s budget is spent)" | tee -a "$log"
    RC=125 SECS=0
    return
  fi
  local start
  start=$(date +%s)
  echo "\$ $* (limit ${limit}s)" >>"$log"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log" | grep -E --line-buffered -- "$filter"
  RC=${PIPESTATUS[0]}
  SECS=$(($(date +%s) - start))
}

status_of() {  # status_of RC: ok / TIMEOUT / FAILED
  case $1 in
    0) echo ok ;;
    124 | 137) echo "TIMEOUT" ;;
    125) echo "TIMEOUT (budget)" ;;
    *) echo "FAILED (rc $1)" ;;
  esac
}

gtest_count() {  # gtest_count LOG PASSED|FAILED|SKIPPED: the summary count, 0 if absent
  local n
  n=$(grep -E "^\[  $2 *\] [0-9]+ tests?" "$1" | tail -n 1 | grep -oE '[0-9]+' | head -n 1)
  echo "${n:-0}"
}

# ---- setup: unpack, find the GPU and CUDA's libraries -------------------------------
banner "setup"
setup_start=$(date +%s)
ENV_LOG="$OUT/env.log"
: >"$ENV_LOG"
setup_status=ok setup_detail=""
if [ ! -f "$PACK_ARCHIVE" ]; then
  setup_status="FAILED" setup_detail="no $PACK_ARCHIVE: run scripts/gpu_pack.sh where nvcc is, carry gpu-pack"
else
  rm -rf "$PACK" && mkdir -p "$PACK"
  if command -v xz >/dev/null; then
    tar -C "$PACK" -xJf "$PACK_ARCHIVE"
  else  # no xz-utils: Python's lzma reads it too
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$PACK_ARCHIVE" "$PACK"
  fi || { setup_status="FAILED" setup_detail="could not unpack $PACK_ARCHIVE"; }
fi

HAVE_GPU=0 GPU_NAME="none" GPU_COUNT=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/tmp/gpucheck-smi-L 2>&1 && grep -q '^GPU ' /tmp/gpucheck-smi-L; then
  HAVE_GPU=1
  GPU_COUNT=$(grep -c "^GPU " /tmp/gpucheck-smi-L)
  GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
  NO_GPU_WHY=""
else
  NO_GPU_WHY=$(command -v nvidia-smi >/dev/null 2>&1 && head -n 1 /tmp/gpucheck-smi-L || echo "nvidia-smi not found")
fi

# Directories holding the CUDA libraries the binaries need but the pack leaves
# out: the loader cache, the toolkit's usual places, pip's nvidia wheels (torch's
# venv), then one bounded search; the pack's own cudart comes last.
unresolved() {  # sonames the packed binaries cannot find with the current TANDEM_CUDA_LIBS
  for f in "$PACK"/libexec/*; do
    env LD_LIBRARY_PATH="$PACK/lib${TANDEM_CUDA_LIBS:+:$TANDEM_CUDA_LIBS}" ldd "$f" 2>&1
  done | awk '/not found/ {print $1}' | sort -u
}
add_cuda_dir() {
  case ":$TANDEM_CUDA_LIBS:" in *":$1:"*) ;; *) TANDEM_CUDA_LIBS=${TANDEM_CUDA_LIBS:+$TANDEM_CUDA_LIBS:}$1 ;; esac
}
export TANDEM_CUDA_LIBS=""
NCCL_DIR=""
if [ "$setup_status" = ok ]; then
  left=()
  for lib in $(unresolved); do
    found=""
    for d in $(ldconfig -p 2>/dev/null | awk -v n="$lib" '$1 == n {print $NF}' | xargs -r -n 1 dirname) \
      /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib /usr/local/cuda-13*/lib64 \
      /usr/local/cuda-13*/targets/x86_64-linux/lib /usr/local/cuda-13*/lib \
      /opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib /usr/local/lib/python3*/dist-packages/nvidia/*/lib \
      /usr/lib/python3/dist-packages/nvidia/*/lib; do
      [ -e "$d/$lib" ] && { found=$d; break; }
    done
    if [ -n "$found" ]; then add_cuda_dir "$found"; else left+=("$lib"); fi
  done
  if ((${#left[@]})); then
    expr=()
    for lib in "${left[@]}"; do expr+=(${expr[0]+-o} -name "$lib"); done
    while read -r f; do add_cuda_dir "$(dirname "$f")"; done < <(timeout 60 find /usr /opt /root \( "${expr[@]}" \) 2>/dev/null)
  fi
  if unresolved | grep -q '^libcudart\.so' && [ -d "$PACK/lib/cuda-fallback" ]; then add_cuda_dir "$PACK/lib/cuda-fallback"; fi
  # NCCL (transport.backend: nccl) is dlopen-ed, so ldd does not ask for it:
  # look for it the same way and put its directory on the path if found.
  for d in $(ldconfig -p 2>/dev/null | awk '$1 == "libnccl.so.2" {print $NF}' | xargs -r -n 1 dirname) \
    /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda-13*/lib64 /usr/local/cuda-13*/lib \
    /opt/*/.venv/lib/python3*/site-packages/nvidia/nccl/lib /usr/local/lib/python3*/dist-packages/nvidia/nccl/lib \
    /usr/lib/python3/dist-packages/nvidia/nccl/lib; do
    if [ -e "$d/libnccl.so.2" ]; then NCCL_DIR=$d; add_cuda_dir "$d"; break; fi
  done
  still=$(unresolved | tr '\n' ' ')
  if [ -n "$still" ]; then
    setup_status="FAILED" setup_detail="libraries not found: $still"
  else
    setup_detail="pack unpacked, every library resolves; CUDA libs from ${TANDEM_CUDA_LIBS:-the loader cache}"
  fi
fi

{
  echo "== gpu_check.sh at $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET}s"
  echo "host: $(uname -srm); $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME"); glibc $(ldd --version 2>&1 | head -n 1 | grep -oE '[0-9.]+$')"
  echo "GPU: $GPU_NAME ${NO_GPU_WHY:+($NO_GPU_WHY)}"
  echo "TANDEM_CUDA_LIBS=$TANDEM_CUDA_LIBS"
  echo "NCCL: ${NCCL_DIR:-libnccl.so.2 not found (the nccl tests are left out)}"
  echo "nvcc: $(command -v nvcc >/dev/null && nvcc --version | tail -n 2 | head -n 1 || echo 'not on PATH')"
  echo
  echo "== pack manifest"
  cat gpu-pack/MANIFEST.txt 2>/dev/null | head -n 6
  echo
  echo "== ldd of the packed binaries"
  for f in "$PACK"/libexec/*; do
    echo "-- $(basename "$f")"
    env LD_LIBRARY_PATH="$PACK/lib${TANDEM_CUDA_LIBS:+:$TANDEM_CUDA_LIBS}" ldd "$f" 2>&1
  done
} >>"$ENV_LOG" 2>&1
if ((HAVE_GPU)); then
  {
    echo
    echo "== nvidia-smi"
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu,persistence_mode --format=csv
  } 2>&1 | tee -a "$ENV_LOG"
else
  echo "nvidia-smi: skipped: no GPU ($NO_GPU_WHY)" | tee -a "$ENV_LOG"
fi
echo "setup: $setup_status: $setup_detail"
record "setup" "$setup_status" "$(($(date +%s) - setup_start))" "$setup_detail"
PACK_OK=0
[ "$setup_status" = ok ] && PACK_OK=1

no_gpu="skipped: no GPU"
STEPS=${STEPS:-tests cluster generate kernels ipc e2e profile parity}
want() { [[ " $STEPS " == *" $1 "* ]]; }
# runs_on_gpu STEP [WHY]: false (with STEP recorded as skipped) when the pack
# did not unpack or there is no GPU.
runs_on_gpu() {
  if ((!PACK_OK)); then
    record "$1" "skipped: setup failed" 0 ""
    return 1
  fi
  if ((!HAVE_GPU)); then
    record "$1" "$no_gpu" 0 "${2:-}"
    return 1
  fi
}
: >"$OUT/benchmarks.log"

if want tests; then
# ---- gpu-labelled tests (tests/unit/cuda) ---------------------------------------------
banner "gpu tests: tandem_unit_cuda_tests"
LOG="$OUT/gpu_tests.log"
: >"$LOG"
if ((!PACK_OK)); then
  record "gpu tests" "skipped: setup failed" 0 ""
else
  # On a GPU machine an unusable device (a driver older than this build's
  # runtime) fails the tests instead of skipping them; NCCL pairs need two GPUs.
  nccl_filter="" require=""
  ((GPU_COUNT < 2)) && nccl_filter="--gtest_filter=-NcclTwoGpus*"
  [ -z "$NCCL_DIR" ] && nccl_filter="--gtest_filter=-Nccl*"
  ((HAVE_GPU)) && require="TANDEM_REQUIRE_GPU=1"
  run_timed 150 "$LOG" '^\[  (PASSED|FAILED) *\]|^\[  SKIPPED \] [0-9]+ test|^\[==========\] [0-9]+ tests' \
    env $require "$PACK/bin/tandem_unit_cuda_tests" \
    --gtest_output="xml:$OUT/gpu_tests.xml" --gtest_color=no $nccl_filter
  p=$(gtest_count "$LOG" PASSED) f=$(gtest_count "$LOG" FAILED) s=$(gtest_count "$LOG" SKIPPED)
  detail="$p passed, $f failed, $s skipped"
  if ((!HAVE_GPU)); then
    st="$no_gpu"
    detail="binary loads from the pack; $detail (the tests skip themselves)"
    ((RC != 0)) && st="$(status_of "$RC"), no GPU"
  else
    st=$(status_of "$RC")
    # On a GPU a skipped test means the device was not usable: not a pass.
    [ "$st" = ok ] && ((s > 0)) && st="FAILED (skips on a GPU)"
  fi
  record "gpu tests" "$st" "$SECS" "$detail"
fi
fi

if want cluster; then
# ---- cluster nodes on the GPU: equivalence with the single-process engine -------------
# (appended to gpu_tests.log)
banner "cluster on the GPU: attention and expert nodes with device: cuda"
LOG="$OUT/gpu_tests.log"
if runs_on_gpu "cluster gpu" "the CPU cluster is what CI runs"; then
  run_timed 180 "$LOG" '^\[  (PASSED|FAILED) *\]|^\[  SKIPPED \] [0-9]+ test|^\[==========\] [0-9]+ tests' \
    env TANDEM_BIN="$PACK/bin/tandem" "$PACK/bin/tandem_integration_cluster_tests" \
    --gtest_filter='Devices/ClusterGpu.*:ClusterNccl.*' --gtest_color=no
  st=$(status_of "$RC")
  [ "$st" = ok ] && (($(gtest_count "$LOG" SKIPPED) > 0)) && st="FAILED (skips on a GPU)"
  record "cluster gpu" "$st" "$SECS" "$(gtest_count "$LOG" PASSED) passed, $(gtest_count "$LOG" FAILED) failed (4 device mixes x 2 models vs the CPU engine; nccl: served on 2+ GPUs, refused on 1)"
fi
fi

if want generate; then
# ---- end to end: tandem generate on the GPU forward against the CPU one -----------------
# (appended to gpu_tests.log: the device tool returns at most 8 files)
banner "end to end: tandem generate --device cuda vs cpu (small-mixtral, greedy)"
LOG="$OUT/gpu_tests.log"
if runs_on_gpu "generate cuda" "the CPU path is what CI runs"; then
  e2e_start=$(date +%s)
  run_timed 60 "$LOG" '^$' "$PACK/bin/tandem" make-model --preset small-mixtral --seed 0 --out "$WORK/small-mixtral"
  # A greedy 64-token run on DEVICE ($1): text to gen_$1.txt, stats to gen_$1.err.
  gen='"$0" generate --model "$2" --prompt "The weather in the mountains" --max-tokens 64 --ignore-eos \
    --device "$1" >"$3/gen_$1.txt" 2>"$3/gen_$1.err"'
  run_timed 60 "$LOG" 'tandem generate' sh -c "$gen" "$PACK/bin/tandem" cpu "$WORK/small-mixtral" "$WORK"
  cpu_rc=$RC
  run_timed 60 "$LOG" 'tandem generate' sh -c "$gen" "$PACK/bin/tandem" cuda "$WORK/small-mixtral" "$WORK"
  cat "$WORK/gen_cpu.err" "$WORK/gen_cuda.err" >>"$LOG"
  if ((cpu_rc == 0 && RC == 0)); then
    same=$(cmp -s "$WORK/gen_cpu.txt" "$WORK/gen_cuda.txt" && echo "same text" || echo "texts differ (ties?)")
    detail="cpu: $(grep -oE 'decode: [0-9]+ tokens, [0-9.]+ tokens/s' "$WORK/gen_cpu.err"); cuda: $(grep -oE 'decode: [0-9]+ tokens, [0-9.]+ tokens/s' "$WORK/gen_cuda.err"); $same"
    st=ok
  else
    st="FAILED"
    detail=$(tail -n 1 "$WORK/gen_cuda.err")
  fi
  record "generate cuda" "$st" "$(($(date +%s) - e2e_start))" "$detail"
fi
fi

if want kernels; then
# ---- CUDA kernel benchmarks ------------------------------------------------------------
banner "benchmarks: cuda_kernels_bench"
LOG="$OUT/benchmarks.log"
if ((!PACK_OK)); then
  record "cuda_kernels_bench" "skipped: setup failed" 0 ""
else
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
  run_timed 200 "$LOG" '.' "$PACK/bin/cuda_kernels_bench" --csv "$OUT/cuda_kernels_bench.csv" $BENCH_ARGS
  rc1=$RC secs=$SECS
  detail=$(grep -E '^cuda_kernels_bench: ' "$LOG" | tail -n 1 | sed 's/^cuda_kernels_bench: //')
  if ((!HAVE_GPU)); then
    st="$no_gpu"
    detail=$(grep -m 1 '^skipped:' "$LOG" || echo "no skip line: see $LOG")
    ((rc1 != 0)) && st="$(status_of "$rc1"), no GPU"
  else
    st=$(status_of "$rc1")
    if ((rc1 == 0 && BENCH_REPEAT > 0)); then
      # A second, shorter run: differences between the two are the noise floor.
      echo "--- second run (--quick), for run-to-run spread" | tee -a "$LOG"
      run_timed 90 "$LOG" '^(baseline|cuda_kernels_bench:)' "$PACK/bin/cuda_kernels_bench" --quick
      secs=$((secs + SECS))
      detail="$detail; repeat: $(grep -E '^cuda_kernels_bench: ' "$LOG" | tail -n 1 | grep -oE 'targets met [0-9]+/[0-9]+' || echo "rc $RC")"
    fi
  fi
  record "cuda_kernels_bench" "$st" "$secs" "${detail:-see $LOG}"
fi
fi

if want ipc; then
# ---- M2N over CUDA IPC against cudaMemcpy device-to-device -----------------------------
banner "benchmarks: cuda_ipc_bench (M2N over CUDA IPC vs D2D copy)"
LOG="$OUT/benchmarks.log"
if ((!PACK_OK)); then
  record "cuda_ipc_bench" "skipped: setup failed" 0 ""
else
  run_timed 120 "$LOG" '.' "$PACK/bin/cuda_ipc_bench"
  if ((!HAVE_GPU)); then
    st="$no_gpu"
    ((RC != 0)) && st="$(status_of "$RC"), no GPU"
    detail="binary loads from the pack"
  else
    st=$(status_of "$RC")
    detail=$(grep -iE 'target' "$LOG" | tail -n 3 | tr '\n' ' ')
  fi
  record "cuda_ipc_bench" "$st" "$SECS" "${detail:-see $LOG}"
fi
fi

if want e2e; then
# ---- end to end on one GPU: colocated vs disaggregated, m = 1, 2, 3 --------------------
# Colocated: one process (generate_bench --device cuda). Disaggregated: tandem
# serve with one attention and one expert node sharing the GPU, over CUDA IPC
# and over UCX with host staging (E2E_TRANSPORTS), and tandem bench at the same
# concurrency; tandem status's breakdown shows where the step time goes. E2E_MODEL (a make-model preset,
# default small-mixtral; qwen3-30b-a3b-4l is the issue's shape, ~1 min to make).
banner "end to end on one GPU: colocated vs disaggregated (m = 1, 2, 3)"
LOG="$OUT/benchmarks.log"
E2E_MODEL=${E2E_MODEL:-small-mixtral}
if runs_on_gpu "e2e one GPU"; then
  e2e_start=$(date +%s)
  dir="$WORK/$E2E_MODEL"
  [ -f "$dir/config.json" ] || run_timed 150 "$LOG" '^$' "$PACK/bin/tandem" make-model --preset "$E2E_MODEL" --seed 0 --out "$dir"
  run_timed 90 "$LOG" '.' "$PACK/bin/generate_bench" --model "$dir" --device cuda --batches 16 \
    --prompt-tokens 32 --decode-tokens 64
  colocated=$(awk '$1 == 16 {print $3}' "$LOG" | tail -n 1)
  run_timed 90 "$LOG" '.' "$PACK/bin/generate_bench" --model "$dir" --device cuda --batches 16 \
    --prompt-tokens 32 --decode-tokens 64 --graphs on
  graphed=$(awk '$1 == 16 {print $3}' "$LOG" | tail -n 1)
  run_timed 90 "$LOG" '.' "$PACK/bin/generate_bench" --model "$dir" --device cuda --batches 16 \
    --prompt-tokens 32 --decode-tokens 64 --experts batched
  batched=$(awk '$1 == 16 {print $3}' "$LOG" | tail -n 1)
  run_timed 90 "$LOG" '.' "$PACK/bin/generate_bench" --model "$dir" --device cuda --batches 16 \
    --prompt-tokens 32 --decode-tokens 64 --experts device --graphs on
  whole=$(awk '$1 == 16 {print $3}' "$LOG" | tail -n 1)
  run_timed 300 "$LOG" '^==|throughput|^attention' env TANDEM="$PACK/bin/tandem" DEVICE=cuda \
    TRANSPORTS="${E2E_TRANSPORTS:-cuda_ipc ucx}" READY_TRIES=300 \
    CONCURRENCY=16 REQUESTS=32 PROMPT=32 OUTPUT=64 bash scripts/pingpong_bench.sh "$dir" 1 1
  st=$(status_of "$RC")
  # "cuda_ipc: a/b/c ucx: d/e/f" output tok/s for m = 1/2/3
  disagg=$(awk '/^== transport=/ {split($2, t, "="); if (t[2] != cur) {cur = t[2]; printf "%s%s: ", (n++ ? "; " : ""), cur; sep = ""}}
                /output throughput/ {printf "%s%s", sep, $(NF-1); sep = "/"}' "$LOG")
  record "e2e one GPU" "$st" "$(($(date +%s) - e2e_start))" "colocated batch 16: ${colocated:-?} decode tok/s (${graphed:-?} with CUDA graphs, ${batched:-?} with batched experts, ${whole:-?} with device experts and whole-layer graphs); disaggregated (output tok/s, m=1/2/3) ${disagg:-see $LOG}"
fi
fi

if want profile; then
# ---- the planner's measured profile of this GPU -------------------------------------------
banner "tandem profile on the GPU (small-mixtral, the planner's measured points)"
LOG="$OUT/benchmarks.log"
if runs_on_gpu "profile"; then
  prof_start=$(date +%s)
  dir="$WORK/small-mixtral"
  [ -f "$dir/config.json" ] || run_timed 60 "$LOG" '^$' "$PACK/bin/tandem" make-model --preset small-mixtral --seed 0 --out "$dir"
  printf 'model: {path: %s}\ncluster: {device: cuda}\n' "$dir" >"$WORK/profile.yaml"
  run_timed 120 "$LOG" '^(measured|fitted|the fitted|wrote)' "$PACK/bin/tandem" profile --config "$WORK/profile.yaml" \
    --name "$(echo "$GPU_NAME" | tr ' ' '-')-measured" --out "$WORK/gpu-profile.yaml"
  st=$(status_of "$RC")
  [ -f "$WORK/gpu-profile.yaml" ] && { echo "--- gpu-profile.yaml"; cat "$WORK/gpu-profile.yaml"; } >>"$LOG"
  record "profile" "$st" "$(($(date +%s) - prof_start))" "$(grep -E '^fitted' "$LOG" | tail -n 1)"
fi
fi

if want parity; then
# ---- HF parity with transformers on the GPU -------------------------------------------
banner "HF parity (transformers on the GPU, tandem on the CPU)"
LOG="$OUT/hf_parity.log"
: >"$LOG"
PARITY_FILTER='Presets/HfParity.*:Written/HfWritten.*'
parity_detail() {  # gtest counts and the largest logits error the test printed
  local worst
  worst=$(grep -oE 'max rel err [0-9.eE+-]+' "$LOG" | awk '{print $4}' | sort -g | tail -n 1)
  echo "$(gtest_count "$LOG" PASSED) passed, $(gtest_count "$LOG" FAILED) failed, $(gtest_count "$LOG" SKIPPED) skipped; max logits rel err ${worst:-n/a} (bound 1e-3)"
}
if ((!PACK_OK)); then
  record "hf parity (GPU)" "skipped: setup failed" 0 ""
else
  parity_start=$(date +%s)
  torch_line=$(timeout 120 python3 -c 'import torch, transformers, safetensors
ok = torch.cuda.is_available()
print(f"torch {torch.__version__} transformers {transformers.__version__} cuda {ok}" + (f" {torch.cuda.get_device_name(0)}" if ok else ""))' 2>&1 | tail -n 1)
  echo "python: $torch_line" | tee -a "$LOG"
  if ((HAVE_GPU)) && [[ $torch_line == *"cuda True"* ]]; then
    rm -rf "$WORK/hf" && mkdir -p "$WORK/hf"
    run_timed 180 "$LOG" ': wrote |Error|error' \
      python3 scripts/hf_parity.py --tandem "$PACK/bin/tandem" --out "$WORK/hf" --device cuda
    if ((RC == 0)); then
      tar -C "$WORK" -czf "$OUT/hf_fixtures_gpu.tar.gz" hf
      run_timed 120 "$LOG" '^\[ parity \]|^\[  (PASSED|FAILED) *\]|^\[  SKIPPED \] [0-9]+ test' \
        env TANDEM_HF_FIXTURES="$WORK/hf" "$PACK/bin/tandem_integration_generate_tests" \
        --gtest_filter="$PARITY_FILTER" --gtest_color=no
      st=$(status_of "$RC")
      # A missing fixture makes the test skip: on this path that is a failure.
      [ "$st" = ok ] && (($(gtest_count "$LOG" SKIPPED) > 0)) && st="FAILED (fixtures missing)"
      detail=$(parity_detail)
    else
      st="$(status_of "$RC") (recording with transformers)"
      detail=$(grep -E 'Error|error' "$LOG" | tail -n 1)
    fi
  else
    # No GPU for transformers: still run the C++ side against the committed CPU
    # fixtures, which proves the packed test binary works on this machine.
    why=$([ "$HAVE_GPU" = 1 ] && echo "torch sees no CUDA: $torch_line" || echo "$NO_GPU_WHY")
    run_timed 120 "$LOG" '^\[ parity \]|^\[  (PASSED|FAILED) *\]|^\[  SKIPPED \] [0-9]+ test' \
      env TANDEM_HF_FIXTURES="$PWD/tests/fixtures/hf" "$PACK/bin/tandem_integration_generate_tests" \
      --gtest_filter="$PARITY_FILTER" --gtest_color=no
    if ((HAVE_GPU)); then st="FAILED (torch: no CUDA)"; else st="$no_gpu"; fi
    ((RC != 0)) && st="$(status_of "$RC") (C++ side)"
    detail="transformers not run on a GPU ($why); C++ vs committed CPU fixtures: $(parity_detail)"
  fi
  record "hf parity (GPU)" "$st" "$(($(date +%s) - parity_start))" "$detail"
fi
fi

# ---- summary --------------------------------------------------------------------------
total=$(($(date +%s) - T0))
rc=0
{
  echo
  echo "===== gpu_check summary: $GPU_NAME, $(date -u +%Y-%m-%dT%H:%M:%SZ), ${total}s of ${BUDGET}s ====="
  printf '%-20s %-28s %5s  %s\n' step status secs detail
  for i in "${!NAMES[@]}"; do
    printf '%-20s %-28s %5s  %s\n' "${NAMES[$i]}" "${STATUSES[$i]}" "${SECONDS_TAKEN[$i]}" "${DETAILS[$i]}"
    case ${STATUSES[$i]} in FAILED* | TIMEOUT*) rc=1 ;; esac
  done
  echo "logs: $OUT ($(cd "$OUT" && ls | tr '\n' ' '))"
  echo "exit $rc"
} | tee "$OUT/summary.txt"
exit $rc
