#!/usr/bin/env bash
# Evidence that `distill train` distils, and that its training matches a PyTorch reference.
#
# On the shipped support task (examples/support: 240 training prompts, 60 held out) with the default
# teacher: builds the teacher-signal datasets (skipped when present), trains the same pruned student
# (every 3rd teacher layer) twice — KD (forward KL on the teacher's top-32) and SFT (cross-entropy on
# the teacher's sampled tokens) — with identical data, steps and optimiser, then trains both again
# with bench/reference/train_reference.py (PyTorch) on the exact batches distill used, and prints
# held-out KL / top-1 curves and the parity ratios.
#
# Usage: bench/kd_vs_sft.sh [WORK_DIR]      (default target/bench/kd_vs_sft; STEPS=30 by default)
# Needs: python3 with the packages in bench/reference/requirements.txt (torch, safetensors).
# Takes about 25 minutes on 2 cores, most of it the teacher generating the datasets once.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-target/bench/kd_vs_sft}"
steps="${STEPS:-30}"
source bench/common.sh
mkdir -p "$work"

for split in train heldout; do
  "$distill" generate --model "$teacher" --dataset "$work/data-$split" --prompts-file "examples/support/$split.jsonl" \
    --k 32 --max-tokens 64 --temperature 0.7 --top-p 0.95 --seed 0
done

for run in kd sft; do
  kd_weight=$([[ $run == kd ]] && echo 1.0 || echo 0.0)
  cat > "$work/$run.toml" <<TOML
dataset = "$work/data-train"
eval_dataset = "$work/data-heldout"
output = "$work/run-$run"
steps = $steps
batch_size = 4
seq_len = 192
eval_every = 5
checkpoint_every = 1000

[student]
type = "prune"
from = "$teacher"
keep_every = 3

[loss]
kd_weight = $kd_weight

[optimizer]
lr = 5e-4
TOML
  rm -rf "$work/run-$run" "$work/ref-$run"
  "$distill" train "$work/$run.toml"
  "$distill" train "$work/$run.toml" --export-reference "$work/ref-$run"
  python3 bench/reference/train_reference.py "$work/ref-$run" --out "$work/ref-$run/result.json"
done
python3 bench/reference/compare.py "$work"
