#!/usr/bin/env bash
# The CUDA toolkit from PyPI wheels, for building distill with `--features cuda` on a machine
# without a system CUDA: nvcc, the runtime, NVRTC, cuRAND and cuBLAS headers and libraries, into
# $DISTILL_HOME/cuda (default ~/.cache/distill/cuda). candle 0.11's cudarc accepts CUDA up to 13.4,
# the default. DISTILL_CUDA=13.0 installs 13.0 instead (into cuda-13.0/): a GPU driver runs PTX
# only from a toolkit no newer than itself, and the lent machines' driver (580) is CUDA 13.0.
# The wheels ship versioned libraries only (libcublas.so.13, …): lib-link/ beside them holds the
# unversioned names the linker asks for. The driver's libcuda comes with the GPU's driver.
#
#   eval "$(scripts/cuda-toolkit.sh)"               # installs once, then prints the exports to use it
#   eval "$(scripts/cuda-toolkit.sh --check-only)"  # the same, with nvcc replaced by scripts/ci-nvcc,
#                                                   # for `cargo check --features cuda` (CI)
set -euo pipefail
check_only=false
[ "${1:-}" = "--check-only" ] && check_only=true
version=${DISTILL_CUDA:-13.4}
case $version in
    13.4) home=${DISTILL_HOME:-$HOME/.cache/distill}/cuda
          wheels=("nvidia-cuda-nvcc==13.4.92" "nvidia-nvvm==13.4.92" "nvidia-cuda-crt==13.4.92"
                  "nvidia-cuda-runtime==13.4.92" "nvidia-cuda-nvrtc==13.4.92" "nvidia-cuda-cccl<13.4"
                  "nvidia-curand<10.5" "nvidia-cublas==13.4.*") ;;
    13.0) home=${DISTILL_HOME:-$HOME/.cache/distill}/cuda-13.0
          wheels=("nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88"
                  "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-nvrtc==13.0.88" "nvidia-cuda-cccl==13.0.85"
                  "nvidia-curand<10.5" "nvidia-cublas==13.0.*") ;;
    *) echo "DISTILL_CUDA=$version: 13.4 or 13.0" >&2; exit 1 ;;
esac
root=$home/site/nvidia/cu13
if [ ! -x "$root/bin/nvcc" ]; then
    echo "installing the CUDA $version toolkit wheels into $home (about 1.1 GB)" >&2
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$home/site" "${wheels[@]}" >&2
fi
mkdir -p "$home/lib-link"
for lib in "$root"/lib/lib*.so.*; do
    base=$(basename "$lib")
    ln -sf "$lib" "$home/lib-link/${base%%.so.*}.so"
done
echo "export CUDA_HOME=$root"
if $check_only; then
    # A toolkit root whose nvcc is the wrapper (cudaforge finds include/ beside nvcc's bin/).
    shadow=$home/check-root
    mkdir -p "$shadow/bin"
    cp "$(dirname "$0")/ci-nvcc" "$shadow/bin/nvcc"
    for d in include nvvm cccl; do ln -sfn "$root/$d" "$shadow/$d"; done
    ln -sfn "$root/lib" "$shadow/lib64"
    echo "export PATH=$shadow/bin:\$PATH"
else
    echo "export PATH=$root/bin:\$PATH"
fi
echo "export LIBRARY_PATH=$home/lib-link:$root/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
echo "export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}"
