#!/usr/bin/env bash
# Teacher scoring speed: distill vs PyTorch (transformers) vs llama.cpp (llama-cpp-python, the Q4_1
# GGUF) on issue 6's workload — SmolLM2-135M scoring 8 sequences of 256 tokens at every position,
# keeping the top-32 log-probabilities. Each at two precisions where it has them: distill with f32
# and with bf16 matmuls (`--matmuls bf16`, CPUs with AVX-512 BF16), PyTorch in f32 and under bf16
# autocast. Runs alternate (all five, twice) and the script prints tokens/s and the ratios, best of
# two each, then how far bf16 moves distill's distributions from f32 (the matmul_fidelity example).
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
  for matmuls in f32 bf16; do
    rm -rf "$work/dataset"
    "$distill" generate --model "$teacher" --dataset "$work/dataset" --prompts-file "$work/prompts.jsonl" \
      --k 32 --batch-size 8 --matmuls "$matmuls" 2> "$work/distill-$matmuls-$round.log" >/dev/null
    grep -o 'this run: [0-9]* tokens in [0-9.]* s' "$work/distill-$matmuls-$round.log" > "$work/distill-$matmuls-$round.txt"
    # Where the CPU lacks AVX-512 BF16, distill says so and runs f32: the figure is labelled so.
    grep -q 'running f32 matmuls' "$work/distill-$matmuls-$round.log" && echo "(fell back to f32)" >> "$work/distill-$matmuls-$round.txt"
  done
  for tool in torch torch-bf16; do
    python3 bench/reference/score_reference.py "$tool" "$work/teacher-hf" "$work/seqs.json" > "$work/$tool-$round.json"
  done
  python3 bench/reference/score_reference.py llamacpp "$teacher" "$work/seqs.json" > "$work/llamacpp-$round.json"
done
python3 - "$work" <<'PY'
import json, re, sys
from pathlib import Path
work = Path(sys.argv[1])
best = {}
for r in (1, 2):
    figures = {}
    for matmuls in ("f32", "bf16"):
        text = (work / f"distill-{matmuls}-{r}.txt").read_text()
        n, s = re.search(r"this run: (\d+) tokens in ([0-9.]+) s", text).groups()
        label = f"distill-{matmuls}" + (" (fell back to f32)" if "fell back" in text else "")
        figures[label] = int(n) / float(s)
    for tool in ("torch", "torch-bf16", "llamacpp"):
        figures[tool] = json.loads((work / f"{tool}-{r}.json").read_text())["tok_s"]
    print(f"round {r}: " + ", ".join(f"{k} {v:.0f} tok/s" for k, v in figures.items()))
    for k, v in figures.items():
        best[k.split(" ")[0]] = max(best.get(k.split(" ")[0], 0), v)
print(f"f32:  distill/torch = {best['distill-f32'] / best['torch']:.2f}x (target >= 1.3x); "
      f"distill/llama.cpp = {best['distill-f32'] / best['llamacpp']:.2f}x (target >= 3x)")
print(f"bf16: distill/torch-f32 = {best['distill-bf16'] / best['torch']:.2f}x; "
      f"distill/torch-bf16 = {best['distill-bf16'] / best['torch-bf16']:.2f}x; "
      f"distill/llama.cpp = {best['distill-bf16'] / best['llamacpp']:.2f}x")
PY
cargo build --release --locked -j "${CARGO_BUILD_JOBS:-2}" -p distill-models --example matmul_fidelity 2>/dev/null
target/release/examples/matmul_fidelity "$teacher" "$work/seqs.json" || true
