#!/usr/bin/env bash
# A/B of two distill binaries on this machine, alternating runs: teacher scoring (8 given
# completions of ~256 tokens scored at every position, top-32: the scoring bench's workload
# without the other tools) and student training (the training bench's 4-layer student, batches of
# 8x256, 20 steps of KD on the shipped support prompts' teacher signal). For checking that a change
# moved no speed: the PyTorch and llama.cpp ratios of score_speed.sh / train_speed.sh scale with
# distill's own figure.
#
# Usage: bench/ab_binaries.sh OLD_BINARY NEW_BINARY [WORK_DIR]   (ROUNDS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
old="$(realpath "$1")"
new="$(realpath "$2")"
work="${3:-target/bench/ab}"
rounds="${ROUNDS:-3}"
DISTILL_BIN="$new" source bench/common.sh
mkdir -p "$work"
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
text = " ".join(json.loads(l)["messages"][-1]["content"] for l in open("examples/support/train.jsonl"))
with open(f"{work}/score.jsonl", "w") as f:
    for i in range(8):
        f.write(json.dumps({"prompt": "Support reply:", "completion": text[i * 1100:(i + 1) * 1100]}) + "\n")
with open(f"{work}/train.jsonl", "w") as f:
    f.writelines(open("examples/support/train.jsonl").readlines()[:80])
PY
data="$work/data"
[[ -f "$data/manifest.json" ]] || "$new" generate --model "$teacher" --dataset "$data" --prompts-file "$work/train.jsonl" \
  --chat --k 32 --max-tokens 64 --temperature 0.7 --top-p 0.95 2>/dev/null
for round in $(seq 1 "$rounds"); do
  for side in old new; do
    bin="${!side}"
    rm -rf "$work/scored-$side"
    "$bin" generate --model "$teacher" --dataset "$work/scored-$side" --prompts-file "$work/score.jsonl" \
      --k 32 --batch-size 8 2>&1 | grep -o 'this run: [0-9]* tokens in [0-9.]* s' | sed "s/^/score $side round $round: /"
    speed_run_config "$data" "$work/run-$side" 20 "$work" > "$work/run-$side.toml"
    rm -rf "$work/run-$side"
    "$bin" train "$work/run-$side.toml" 2>/dev/null
    python3 -c "import json,sys; l=json.loads(open(sys.argv[1]).readlines()[-1]); print(f'train $side round $round: {l[\"tokens_per_s\"]:.0f} tokens/s, loss {l[\"loss\"]}')" "$work/run-$side/metrics.jsonl"
  done
  cmp -s "$work/scored-old/shard-00000.parquet" "$work/scored-new/shard-00000.parquet" && echo "round $round: scored shards identical"
done
