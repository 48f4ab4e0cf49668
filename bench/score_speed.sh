#!/usr/bin/env bash
# Teacher scoring speed: distill vs PyTorch (transformers, f32) vs llama.cpp (llama-cpp-python, the
# Q4_1 GGUF) on issue 6's workload — SmolLM2-135M scoring 8 sequences of 256 tokens at every
# position, keeping the top-32 log-probabilities. Runs alternate (distill, torch, llama.cpp, twice)
# and the script prints tokens/s and the ratios, best of two each.
#
# distill is timed through `distill generate --dataset` with the texts given as completions (scoring
# only; its own "this run: N tokens in S s" figure, which excludes model loading). The others time
# only their scoring loop as well.
#
# Usage: bench/score_speed.sh [WORK_DIR]    (default target/bench/score_speed)
# Needs bench/reference/requirements.txt plus transformers and llama-cpp-python==0.3.36.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-target/bench/score_speed}"
source bench/common.sh
mkdir -p "$work"
[[ -d "$work/teacher-hf" ]] || "$distill" export "$teacher" -o "$work/teacher-hf"
# Eight 256-token texts from the shipped prompts; the same ids for every tool.
python3 - "$work" <<'PY'
import json, sys
from pathlib import Path
from transformers import AutoTokenizer
work = Path(sys.argv[1])
tok = AutoTokenizer.from_pretrained(work / "teacher-hf")
text = " ".join(json.loads(l)["messages"][-1]["content"] for l in open("examples/support/train.jsonl"))
ids = tok(text, add_special_tokens=False)["input_ids"]
seqs = [ids[i * 256 : (i + 1) * 256] for i in range(8)]
json.dump({"ids": seqs, "k": 32, "batch": 8}, open(work / "seqs.json", "w"))
with open(work / "prompts.jsonl", "w") as f:
    for s in seqs:
        # One-token prompt, the rest given as the completion to score.
        f.write(json.dumps({"prompt": tok.decode(s[:1]), "completion": tok.decode(s[1:])}) + "\n")
PY
for round in 1 2; do
  rm -rf "$work/dataset"
  "$distill" generate --model "$teacher" --dataset "$work/dataset" --prompts-file "$work/prompts.jsonl" \
    --k 32 --batch-size 8 2> "$work/distill-$round.log" >/dev/null
  grep -o 'this run: [0-9]* tokens in [0-9.]* s' "$work/distill-$round.log" > "$work/distill-$round.txt"
  python3 bench/reference/score_reference.py torch "$work/teacher-hf" "$work/seqs.json" > "$work/torch-$round.json"
  python3 bench/reference/score_reference.py llamacpp "$teacher" "$work/seqs.json" > "$work/llamacpp-$round.json"
done
python3 - "$work" <<'PY'
import json, re, sys
from pathlib import Path
work = Path(sys.argv[1])
best = {}
for r in (1, 2):
    n, s = re.search(r"this run: (\d+) tokens in ([0-9.]+) s", (work / f"distill-{r}.txt").read_text()).groups()
    figures = {"distill": int(n) / float(s)}
    for tool in ("torch", "llamacpp"):
        figures[tool] = json.loads((work / f"{tool}-{r}.json").read_text())["tok_s"]
    print(f"round {r}: " + ", ".join(f"{k} {v:.0f} tok/s" for k, v in figures.items()))
    for k, v in figures.items():
        best[k] = max(best.get(k, 0), v)
print(f"teacher scoring distill/torch = {best['distill'] / best['torch']:.2f}x (target >= 1.3x); "
      f"distill/llama.cpp = {best['distill'] / best['llamacpp']:.2f}x (target >= 3x)")
PY
