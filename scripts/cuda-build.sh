#!/usr/bin/env bash
# Builds what bench/gpu.sh runs on a lent GPU machine, which has no Rust toolchain: the CUDA test
# binary and the gpu_bench example, linked here against the PyPI toolkit (scripts/cuda-toolkit.sh),
# copied into .gpu/ (git-ignored) to carry there. The driver library libcuda is not on PyPI: a stub
# of its symbols (from cudarc's bindings), named libcuda.so.1, satisfies the link, and the driver's
# own libcuda.so.1 is loaded in its place on the GPU machine.
#
# The binaries are built with CUDA 13.0 by default (DISTILL_CUDA), the lent machines' driver's:
# PTX from a newer toolkit does not load on an older driver. They travel xz-compressed (about
# 6.5 MB each; 54 MB as they are, over the 64 MiB a run carries); bench/gpu.sh unpacks them.
#
#   scripts/cuda-build.sh     # about 45 minutes on 2 cores the first time (candle's kernels)
set -euo pipefail
cd "$(dirname "$0")/.."
export DISTILL_CUDA=${DISTILL_CUDA:-13.0}
eval "$(bash scripts/cuda-toolkit.sh)"
home=$(dirname "$(dirname "$(dirname "$CUDA_HOME")")")
if [ ! -f "$home/lib-link/libcuda.so" ]; then
    cudarc=$(cargo metadata --format-version 1 --locked --features distill-train/cuda |
        python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')
    grep -ohE 'pub (unsafe )?fn cu[A-Za-z0-9_]+\(' "$(dirname "$cudarc")/src/driver/sys/mod.rs" | sed -E 's/pub (unsafe )?fn //; s/\(//' |
        sort -u | sed 's/.*/void &(void) {}/' >"$home/libcuda-stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 "$home/libcuda-stub.c" -o "$home/lib-link/libcuda.so"
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda-$DISTILL_CUDA}
cargo build --locked -j "${CARGO_BUILD_JOBS:-2}" --features cuda -p distill-train --example gpu_bench
tests=$(cargo test --locked -j "${CARGO_BUILD_JOBS:-2}" --features cuda -p distill-train --test device --no-run \
    --message-format json | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "device":
        print(m["executable"])')
mkdir -p .gpu
cp "$CARGO_TARGET_DIR/debug/examples/gpu_bench" .gpu/gpu_bench
cp "$tests" .gpu/device_tests
strip .gpu/gpu_bench .gpu/device_tests
xz -f -T2 .gpu/gpu_bench .gpu/device_tests
ls -la .gpu
echo "carry .gpu to the GPU machine and run bench/gpu.sh there" >&2
