#!/usr/bin/env bash
# Installs every system package lathe needs on Debian 12 (idempotent, quiet, as root or via sudo).
# The CUDA toolkit is not a Debian package here: when nvcc is on PATH the CUDA backend builds too.
# OpenBLAS: the OpenMP build (libopenblas-openmp-dev), so that BLAS and lathe's own OpenMP loops
# share one libgomp thread pool instead of two pools spinning against each other (see
# bench/README.md). It installs next to the pthreads build if that is already there (Debian
# keeps both in lib/<arch>/openblas-*); CMake links the OpenMP one whenever it is present
# and falls back to any other OpenBLAS otherwise. The system alternative is left as it is.
set -euo pipefail
pkgs=(build-essential cmake pkg-config ccache
      libopenblas-openmp-dev libomp-dev
      libopenmpi-dev openmpi-bin
      libhdf5-dev hdf5-tools
      libprotobuf-dev protobuf-compiler
      nlohmann-json3-dev
      libgtest-dev libgmock-dev libbenchmark-dev)
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
