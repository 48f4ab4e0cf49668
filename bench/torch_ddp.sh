#!/usr/bin/env bash
# The Python package's scale-out path against distill's own trainer: the same run trained by
# `distill train` (grad_accum 2, one process) and by examples/python/train_ddp.py under
# `torchrun --nproc_per_node 2` (DDP on gloo, one micro-batch per process per step), from the same
# initial student (`distill train --export-reference`) on the batches distill packs, read through
# `distill.torch.PackedBatches`. Prints both held-out curves and the ratios, and writes
# bench/results/torch_ddp.json.
#
# Usage: bench/torch_ddp.sh [WORK_DIR]   (default target/bench/torch_ddp; STEPS=30 by default)
# Needs: the Python package installed (scripts/python-package.sh) and `pip install torch safetensors`.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-target/bench/torch_ddp}"
steps="${STEPS:-30}"
source bench/common.sh
mkdir -p "$work"

head -n 80 examples/support/train.jsonl > "$work/train.jsonl"
head -n 20 examples/support/heldout.jsonl > "$work/heldout.jsonl"
for split in train heldout; do
  "$distill" generate --model "$teacher" --dataset "$work/data-$split" --prompts-file "$work/$split.jsonl" \
    --chat --k 32 --max-tokens 48 --temperature 0.7 --top-p 0.95 --seed 0
done
cat > "$work/run.toml" <<TOML
dataset = "$work/data-train"
eval_dataset = "$work/data-heldout"
output = "$work/run-distill"
max_steps = $steps
per_device_train_batch_size = 4
gradient_accumulation_steps = 2
max_length = 128
eval_steps = 10
save_steps = 1000
learning_rate = 1e-3
[student]
type = "prune"
from = "$teacher"
keep_every = 6
TOML
rm -rf "$work/run-distill" "$work/ref" "$work/run-torch"
"$distill" train "$work/run.toml" --export-reference "$work/ref"
"$distill" train "$work/run.toml"
OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 examples/python/train_ddp.py "$work/ref" --out "$work/run-torch" --threads 1
python3 - "$work" <<'PY'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
def rows(run):
    return [json.loads(l) for l in (work / run / "metrics.jsonl").read_text().splitlines() if l.strip()]
ours, theirs = rows("run-distill"), rows("run-torch")
evals = lambda r: {x["step"]: x for x in r if "eval_kl" in x}
losses = lambda r: {x["step"]: x["loss"] for x in r if "loss" in x}
e1, e2 = evals(ours), evals(theirs)
print(f"{'step':>5} {'distill KL':>11} {'DDP KL':>9} {'distill top1':>13} {'DDP top1':>9}")
for s in sorted(e1):
    print(f"{s:>5} {e1[s]['eval_kl']:>11.4f} {e2[s]['eval_kl']:>9.4f} {e1[s]['eval_top1']:>13.4f} {e2[s]['eval_top1']:>9.4f}")
l1, l2 = losses(ours), losses(theirs)
worst = max(abs(l1[s] - l2[s]) / l1[s] for s in l1)
last = max(e1)
ratio = e1[last]["eval_kl"] / e2[last]["eval_kl"]
print(f"step 1 loss: distill {l1[1]:.6f}  DDP {l2[1]:.6f}")
print(f"training loss, worst relative difference over {len(l1)} steps: {worst:.2e}")
print(f"final held-out KL distill/DDP = {ratio:.4f} ({(ratio - 1) * 100:+.2f}%)")
summary = {"steps": last, "first_loss": [l1[1], l2[1]], "worst_loss_rel_diff": worst, "final_kl": [e1[last]["eval_kl"], e2[last]["eval_kl"]],
           "final_top1": [e1[last]["eval_top1"], e2[last]["eval_top1"]], "final_kl_ratio": ratio}
Path("bench/results/torch_ddp.json").write_text(json.dumps(summary, indent=1) + "\n")
PY
