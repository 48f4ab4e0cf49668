#!/usr/bin/env bash
# Student training speed and peak memory: distill vs the PyTorch reference trainer, side by side,
# on issue 6's workload — vocab 49152, hidden 256, 4 layers, 4 heads, intermediate 768, batches of
# 8×256, KD (forward KL) on the teacher's top-32 from the shipped support dataset. Both train the
# same initial student on the exact same batches (distill train --export-reference); runs alternate
# (distill, torch, distill, torch) and the script prints steps/s, positions/s and peak RSS ratios.
#
# Usage: bench/train_speed.sh [WORK_DIR]   (default target/bench/train_speed; STEPS=20)
# Needs the support dataset from bench/kd_vs_sft.sh (made here if missing) and
# bench/reference/requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-target/bench/train_speed}"
steps="${STEPS:-20}"
source bench/common.sh
data=target/bench/kd_vs_sft/data-train
if [[ ! -f "$data/manifest.json" ]]; then
  "$distill" generate --model "$teacher" --dataset "$data" --prompts-file examples/support/train.jsonl \
    --k 32 --max-tokens 64 --temperature 0.7 --top-p 0.95 --seed 0
fi
mkdir -p "$work"
speed_run_config "$data" "$work/run" "$steps" "$work" > "$work/run.toml"
rm -rf "$work/ref"
"$distill" train "$work/run.toml" --export-reference "$work/ref"
# Peak RSS in KiB, as /usr/bin/time reports it (bytes would overflow some awks' %d past 2 GiB).
rss_kib() { grep "Maximum resident set size" "$1" | awk '{print $NF}'; }
for round in 1 2; do
  rm -rf "$work/run"
  /usr/bin/time -v "$distill" train "$work/run.toml" 2> "$work/distill-$round.time" >/dev/null
  tail -1 "$work/run/metrics.jsonl" > "$work/distill-$round.last"
  rss_kib "$work/distill-$round.time" > "$work/distill-$round.rss"
  /usr/bin/time -v python3 bench/reference/train_reference.py "$work/ref" --threads 2 --out "$work/torch-$round.json" \
    2> "$work/torch-$round.time" >/dev/null
  rss_kib "$work/torch-$round.time" > "$work/torch-$round.rss"
done
python3 - "$work" "$steps" <<'PY'
import json, sys
from pathlib import Path
work, steps = Path(sys.argv[1]), int(sys.argv[2])
positions = steps * 8 * 256
rows = []
for r in (1, 2):
    last = json.loads((work / f"distill-{r}.last").read_text())
    ours_s = last["tokens"] / last["tokens_per_s"]
    theirs_s = json.loads((work / f"torch-{r}.json").read_text())["seconds"]
    ours_rss, theirs_rss = (int((work / f"{w}-{r}.rss").read_text()) * 1024 for w in ("distill", "torch"))
    rows.append((ours_s, theirs_s, ours_rss, theirs_rss))
    print(f"round {r}: distill {positions / ours_s:7.0f} positions/s ({steps / ours_s:.2f} steps/s), peak {ours_rss / 2**30:.2f} GiB;"
          f" torch {positions / theirs_s:7.0f} positions/s ({steps / theirs_s:.2f} steps/s), peak {theirs_rss / 2**30:.2f} GiB")
best_ours, best_theirs = min(r[0] for r in rows), min(r[1] for r in rows)
print(f"training speed distill/torch = {best_theirs / best_ours:.2f}x (best of 2 each; target >= 1.5x)")
print(f"peak RSS distill/torch = {min(r[2] for r in rows) / min(r[3] for r in rows):.2f} (target <= 0.8)")
PY
