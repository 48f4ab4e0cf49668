#!/usr/bin/env bash
# The CUDA checks and the side-by-side against PyTorch, in one run on a lent GPU (well under 10
# minutes on an H100):
#   1. the CUDA tests: crates/train/tests/device.rs on DISTILL_TEST_DEVICE=cuda (a training
#      step's loss and every gradient, f32 and bf16, and the teacher's top-k, against the CPU);
#   2. gpu_bench numerics at a real width and vocabulary (the figures behind the tolerances);
#   3. training tokens/s and peak GPU memory of a Qwen2.5-0.5B-shaped student in bf16 mixed
#      precision, distill against PyTorch eager (bench/reference/gpu_torch.py), same shapes;
#   4. teacher scoring tokens/s (all-position top-32) of a Qwen2.5-1.5B-shaped teacher, both tools.
# Prints each result as a JSON line, then the ratios; writes them to $OUT (or bench/results/gpu).
#
#   bench/gpu.sh            # builds with `--features cuda` where cargo is, else runs the
#                           # binaries scripts/cuda-build.sh left in .gpu/ (the lent machines
#                           # have no Rust toolchain: build here, carry .gpu: `carry: [".gpu"]`)
# Environment: GPU_BATCH (8), GPU_SEQ (512), GPU_STEPS (10) size the speed runs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
B=${GPU_BATCH:-8} L=${GPU_SEQ:-512} STEPS=${GPU_STEPS:-10}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

if command -v cargo >/dev/null; then
    export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
    cargo build --release --features cuda -p distill-train --example gpu_bench
    cargo test --release --features cuda -p distill-train --test device --no-run
    BENCH=target/release/examples/gpu_bench
    TESTS=$(ls -t target/release/deps/device-* | grep -v '\.d$' | head -1)
else
    BENCH=/tmp/distill-gpu/gpu_bench TESTS=/tmp/distill-gpu/device_tests
    [ -f .gpu/gpu_bench.xz ] && [ -f .gpu/device_tests.xz ] || { echo "no cargo here and no .gpu/ binaries: run scripts/cuda-build.sh where cargo is and carry .gpu" >&2; exit 1; }
    mkdir -p /tmp/distill-gpu
    for f in gpu_bench device_tests; do
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' ".gpu/$f.xz" "/tmp/distill-gpu/$f"
        chmod +x "/tmp/distill-gpu/$f"
    done
    # The CUDA libraries the binaries link: PyTorch's wheels hold them.
    NV=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null || true)
    [ -n "$NV" ] && export LD_LIBRARY_PATH="$(find "$NV/nvidia" -name 'lib' -type d | tr '\n' ':')${LD_LIBRARY_PATH:-}"
fi

# Runs "$@" and records the most GPU memory its process held (nvidia-smi, CUDA context included)
# into the variable PEAK_MIB.
peak() {
    "$@" &
    local pid=$! max=0 m
    while kill -0 "$pid" 2>/dev/null; do
        m=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null \
            | awk -F', *' -v p="$pid" '$1 == p { print $2 }')
        [ -n "$m" ] && [ "$m" -gt "$max" ] && max=$m
        sleep 0.2
    done
    wait "$pid"
    PEAK_MIB=$max
}

echo "== 1. CUDA tests"
DISTILL_TEST_DEVICE=cuda "$TESTS" --test-threads 1 2>&1 | tee "$OUT/tests.txt"

echo "== 2. numerics"
"$BENCH" --device cuda numerics | tee "$OUT/numerics.jsonl"

echo "== 3. training, 0.5B-shaped student, bf16 mixed precision, $B x $L tokens a step"
peak "$BENCH" --device cuda train --size 0.5b --batch "$B" --seq "$L" --steps "$STEPS" >"$OUT/train_distill.json"
DISTILL_TRAIN_MIB=$PEAK_MIB
peak python3 bench/reference/gpu_torch.py train --size 0.5b --batch "$B" --seq "$L" --steps "$STEPS" >"$OUT/train_torch.json"
TORCH_TRAIN_MIB=$PEAK_MIB

echo "== 4. scoring, 1.5B-shaped teacher, all-position top-32"
for dtype in f32 bf16; do
    "$BENCH" --device cuda score --size 1.5b --dtype $dtype --batch "$B" --seq "$L" >"$OUT/score_distill_$dtype.json"
    python3 bench/reference/gpu_torch.py score --size 1.5b --dtype $dtype --batch "$B" --seq "$L" >"$OUT/score_torch_$dtype.json"
done

python3 - "$OUT" "$DISTILL_TRAIN_MIB" "$TORCH_TRAIN_MIB" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
out, d_mib, t_mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
load = lambda name: json.load(open(f"{out}/{name}.json"))
d, t = load("train_distill"), load("train_torch")
dt = d["result"]["tokens_per_s"]
print(f"training: distill {dt:,.0f} tok/s, PyTorch {t['tokens_per_s']:,.0f} tok/s: {dt / t['tokens_per_s']:.2f}x")
print(f"  peak GPU memory (nvidia-smi): distill {d_mib} MiB, PyTorch {t_mib} MiB: {d_mib / max(t_mib, 1):.2f}x"
      f" (PyTorch's own max_memory_allocated: {t['peak_allocated_bytes'] / 2**20:,.0f} MiB)")
for dtype in ("f32", "bf16"):
    d, t = load(f"score_distill_{dtype}"), load(f"score_torch_{dtype}")
    print(f"scoring {dtype}: distill {d['tokens_per_s']:,.0f} tok/s, PyTorch {t['tokens_per_s']:,.0f} tok/s:"
          f" {d['tokens_per_s'] / t['tokens_per_s']:.2f}x")
EOF
