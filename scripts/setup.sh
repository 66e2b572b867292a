#!/usr/bin/env bash
# Installs every system package lathe needs on Debian 12 (idempotent, quiet, as root or via sudo).
# The CUDA toolkit is not a Debian package here: when nvcc is on PATH the CUDA backend builds too.
# OpenBLAS: libopenblas-dev (Debian's pthreads build, the system alternative, left as it is)
# and, by default, the OpenMP build next to it (libopenblas-openmp-dev), which CMake then
# links (LATHE_OPENBLAS_OPENMP, ON by default): BLAS and lathe's loops on one thread pool,
# 1.10-1.23x the tokens/s at 2 threads (bench/README.md section 20). LATHE_OPENBLAS=pthread
# installs only the pthreads build.
set -euo pipefail
pkgs=(build-essential cmake pkg-config ccache
      libopenblas-dev libomp-dev
      libopenmpi-dev openmpi-bin
      libhdf5-dev hdf5-tools
      libprotobuf-dev protobuf-compiler
      nlohmann-json3-dev
      libgtest-dev libgmock-dev libbenchmark-dev)
case "${LATHE_OPENBLAS:-openmp}" in
  pthread) ;;
  openmp) pkgs+=(libopenblas-openmp-dev) ;;
  *) echo "setup: LATHE_OPENBLAS must be pthread or openmp, got '${LATHE_OPENBLAS}'" >&2; exit 2 ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
