#!/usr/bin/env bash
# Bytes per stored token and quantisation error of the teacher signal, both shard layouts side by
# side: the teacher completes the 240 shipped support prompts once per layout (same seed, so the
# same tokens), top-32 at every completion token. The KL figures are measured by `distill
# generate` against the unquantised top-k, position by position. Reference: DistillKit stores
# ~114 bytes/token at k = 50 (its docs); our target is <= 48 at k = 32 with KL <= 1e-3 nats.
#
# Usage: bench/store_size.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-target/bench/store_size}"
source bench/common.sh
mkdir -p "$work" bench/results
sample=(--k 32 --max-tokens 64 --temperature 0.7 --top-p 0.95 --seed 0)
out=bench/results/store_size.txt
: > "$work/summary.txt"
for layout in plain coded; do
  rm -rf "${work:?}/$layout"
  start=$(date +%s.%N)
  "$distill" generate --model "$teacher" --dataset "$work/$layout" --prompts-file examples/support/train.jsonl \
    --layout "$layout" "${sample[@]}" 2>/dev/null
  end=$(date +%s.%N)
  "$distill" inspect --json "$work/$layout" | python3 -c "
import json, sys
s = json.load(sys.stdin)
print(f\"$layout: {s['completion_tokens']} tokens, {s['bytes_per_token']:.1f} bytes/token, \"
      f\"KL mean {s['quantization_kl_mean_nats']:.1e} max {s['quantization_kl_max_nats']:.1e} nats, \"
      f\"generate {$end - $start:.0f} s\")" | tee -a "$work/summary.txt"
done
{ echo "# bench/store_size.sh, $(date -u +%Y-%m-%d), 240 support prompts, k = 32"; cat "$work/summary.txt"; } > "$out"
cat "$out"
