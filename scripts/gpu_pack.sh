#!/usr/bin/env bash
# Builds, on this (Debian 12, nvcc, no GPU) machine, everything scripts/gpu_check.sh
# runs on a lent GPU machine, and packs it with the shared libraries that machine
# lacks into gpu-pack/ (ignored by git). The GPU machine (Ubuntu 24.04, CUDA 13,
# no package registry) then needs no compiler and no Debian package: one device
# call with carry ["gpu-pack"] running `bash scripts/gpu_check.sh` is enough.
#
#   scripts/gpu_pack.sh            # build-gpu/, sm_90, -j1
#   BUILD_DIR=... CUDA_ARCHS="80;90" JOBS=2 scripts/gpu_pack.sh
#
# What goes in: the binaries, and every library ldd resolves for them except
# glibc / the GCC runtime (Ubuntu 24.04's are newer, so Debian-built code runs
# on them) and CUDA's own libraries (cudart, cuBLAS: hundreds of MiB, and the
# GPU machine has them; a cudart is kept aside as a fallback only). Each binary
# is reached through a wrapper in bin/ that points LD_LIBRARY_PATH at the pack
# for that process alone, so Python and torch on the GPU machine never load
# Debian's libraries by accident.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build-gpu}
PACK_DIR=${PACK_DIR:-gpu-pack}
CUDA_ARCHS=${CUDA_ARCHS:-90}
JOBS=${JOBS:-1}
TARGETS=(tandem tandem_unit_cuda_tests tandem_integration_generate_tests tandem_integration_cluster_tests
  cuda_kernels_bench cuda_ipc_bench generate_bench)

log() { echo "gpu_pack: $*"; }
die() { echo "gpu_pack: $*" >&2; exit 1; }

# ---- build ----------------------------------------------------------------------
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  log "configuring $BUILD_DIR (Release, CUDA archs $CUDA_ARCHS)"
  mkdir -p "$BUILD_DIR"  # the log stays inside it, where .gitignore covers it
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS" \
    >"$BUILD_DIR/gpu_pack.configure.log" 2>&1 || { tail -n 40 "$BUILD_DIR/gpu_pack.configure.log" >&2; die "configure failed"; }
fi
# (not `| grep -q`: grep's early exit would make ninja die of SIGPIPE under pipefail)
targets=$(ninja -C "$BUILD_DIR" -t targets all)
grep -q '^tandem_kernels_cuda:' <<<"$targets" ||
  die "$BUILD_DIR was configured without nvcc; the GPU pack needs the CUDA kernels (is /usr/local/cuda/bin/nvcc there?)"
log "building ${TARGETS[*]} in $BUILD_DIR (-j$JOBS)"
ninja -C "$BUILD_DIR" -j "$JOBS" "${TARGETS[@]}"

bin_path() {
  case "$1" in
    tandem) echo "$BUILD_DIR/src/cli/tandem" ;;
    *_bench) echo "$BUILD_DIR/benchmarks/$1" ;;
    *) echo "$BUILD_DIR/tests/$1" ;;
  esac
}

# ---- stage --------------------------------------------------------------------------
STAGE="$PWD/$BUILD_DIR/gpu-pack-stage"
rm -rf "$STAGE"
mkdir -p "$STAGE/bin" "$STAGE/libexec" "$STAGE/lib" "$STAGE/lib/cuda-fallback"

for t in "${TARGETS[@]}"; do
  src=$(bin_path "$t")
  [ -x "$src" ] || die "built target $t not found at $src"
  cp "$src" "$STAGE/libexec/$t"
  strip --strip-unneeded "$STAGE/libexec/$t"
  # LD_LIBRARY_PATH is searched before the build tree's RUNPATH, and a RUNPATH
  # entry missing on the GPU machine is simply skipped.
  cat >"$STAGE/bin/$t" <<EOF
#!/usr/bin/env bash
# Runs libexec/$t with the pack's libraries; TANDEM_CUDA_LIBS (set by
# scripts/gpu_check.sh) adds the directories holding CUDA's own libraries.
here=\$(cd "\$(dirname "\$(readlink -f "\$0")")/.." && pwd)
export LD_LIBRARY_PATH="\$here/lib\${TANDEM_CUDA_LIBS:+:\$TANDEM_CUDA_LIBS}\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "\$here/libexec/$t" "\$@"
EOF
  chmod +x "$STAGE/bin/$t"
done

# Present on Ubuntu 24.04 in newer versions (glibc 2.39, GCC 14 runtime), or
# provided by the GPU machine's CUDA: not carried.
SYSTEM_RE='^(linux-vdso|ld-linux-x86-64|libc|libm|libdl|libpthread|librt|libresolv|libutil|libanl|libstdc\+\+|libgcc_s)\.so'
CUDA_RE='^lib(cuda|cudart|cublas|cublasLt|nvrtc|nvJitLink|nccl|cufft|curand|cusolver|cusparse|cupti|nvToolsExt)\.so'

missing=$(for t in "${TARGETS[@]}"; do ldd "$STAGE/libexec/$t"; done | grep 'not found' | sort -u || true)
[ -z "$missing" ] || die "unresolved libraries here already: $missing"

carried=0
while read -r soname path; do
  [[ $soname =~ $SYSTEM_RE ]] && continue
  if [[ $soname =~ $CUDA_RE ]]; then
    # The runtime is small and its soname is what our code was linked against:
    # keep it aside in case the GPU machine has only a toolkit without it on
    # any path gpu_check.sh searches. cuBLAS (0.5 GiB) cannot travel.
    [[ $soname == libcudart.so.* ]] && cp -L "$path" "$STAGE/lib/cuda-fallback/$soname"
    continue
  fi
  cp -L "$path" "$STAGE/lib/$soname"
  chmod u+w "$STAGE/lib/$soname"
  strip --strip-unneeded "$STAGE/lib/$soname" 2>/dev/null || true
  carried=$((carried + 1))
done < <(for t in "${TARGETS[@]}"; do ldd "$STAGE/libexec/$t"; done |
           awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u)

# Not carried: UCX's dlopen-ed transport modules (/usr/lib/x86_64-linux-gnu/ucx).
# Nothing gpu_check.sh runs starts a UCX worker; a cluster run on the GPU
# machine would need them plus UCX_MODULE_DIR.

# ---- check the pack in a clean environment ----------------------------------------------
# What the GPU machine will see: only the pack (plus, here, the system's CUDA).
unresolved=""
for f in "$STAGE"/libexec/* "$STAGE"/lib/*.so*; do
  u=$(env -i LD_LIBRARY_PATH="$STAGE/lib" ldd "$f" 2>&1 | grep 'not found' || true)
  [ -z "$u" ] || unresolved+="$f: $u"$'\n'
done
[ -z "$unresolved" ] || die "with LD_LIBRARY_PATH=pack/lib these stay unresolved:"$'\n'"$unresolved"
outside=$(for f in "$STAGE"/libexec/*; do env -i LD_LIBRARY_PATH="$STAGE/lib" ldd "$f"; done |
            awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u |
            grep -v "$STAGE/lib/" | awk '{print $1}' | grep -Ev "$SYSTEM_RE" | grep -Ev "$CUDA_RE" || true)
[ -z "$outside" ] || die "resolved outside the pack but neither system nor CUDA: $outside"

# Newest symbol versions the pack asks of glibc and libstdc++ (Ubuntu 24.04:
# GLIBC_2.39, GLIBCXX_3.4.33, CXXABI_1.3.15).
versions() {
  for f in "$STAGE"/libexec/* "$STAGE"/lib/*.so*; do objdump -T "$f" 2>/dev/null; done |
    grep -oE "\b$1_[0-9.]+\b" | sort -u -V | tail -n 1
}
glibc=$(versions GLIBC); glibcxx=$(versions GLIBCXX); cxxabi=$(versions CXXABI)

# ---- archive ---------------------------------------------------------------------------
rm -rf "$PACK_DIR"
mkdir -p "$PACK_DIR"
archive="$PACK_DIR/tandem-gpu-pack.tar.xz"
log "compressing ($(du -sh "$STAGE" | cut -f1) staged, $carried libraries)"
tar -C "$STAGE" -cf - . | xz -9 -T "$JOBS" >"$archive"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
{
  echo "tandem GPU pack: built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "source: $commit$dirty"
  echo "nvcc: $(/usr/local/cuda/bin/nvcc --version | grep -o 'release [0-9.]*' || echo unknown); CUDA archs: $(grep '^CMAKE_CUDA_ARCHITECTURES:' "$BUILD_DIR/CMakeCache.txt" | cut -d= -f2)"
  echo "needs at most: $glibc $glibcxx $cxxabi"
  echo "archive: $(basename "$archive") $(stat -c %s "$archive") bytes, sha256 $(sha256sum "$archive" | cut -d' ' -f1)"
  echo
  (cd "$STAGE" && find . -type f -printf '%P\t%s\n' | sort)
} >"$PACK_DIR/MANIFEST.txt"
log "wrote $archive ($(du -h "$archive" | cut -f1)); contents in $PACK_DIR/MANIFEST.txt"
log "needs at most $glibc $glibcxx $cxxabi"
