#!/usr/bin/env bash
# The code example end to end (examples/code.toml), and how its prompts were made: the
# Qwen2.5-Coder-1.5B teacher writes function stubs from examples/code/seeds.jsonl
# (`distill generate --synthesize`), examples/code/make_prompts.py keeps each one's signature and
# docstring and drops any close to a HumanEval problem, then the pipeline distils the teacher
# into Qwen2.5-Coder-0.5B and scores both on HumanEval. The undistilled 0.5B is scored the same
# way, as the baseline the distilled one is compared with. Results: bench/results/code_distill.md.
#
#   bash bench/code_distill.sh                  # uses the shipped prompt files
#   SYNTHESIZE=400 bash bench/code_distill.sh   # writes them again first (~40 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
bash scripts/fetch-teacher.sh qwen2.5-coder-1.5b >/dev/null
bash scripts/fetch-teacher.sh qwen2.5-coder-0.5b >/dev/null
humaneval="$(bash scripts/fetch-humaneval.sh | tail -1)"
models="$home/models/qwen2.5-coder"
work="${WORK:-/tmp/distill-code}"
mkdir -p "$work"

if [[ -n "${SYNTHESIZE:-}" ]]; then
  "$distill" generate --model "$models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" --synthesize "$SYNTHESIZE" \
    --seeds examples/code/seeds.jsonl -o "$work/synthesized.jsonl" --max-tokens 200 --temperature 1.0
  python3 examples/code/make_prompts.py "$work/synthesized.jsonl" "$humaneval"
fi

# The baseline: the 0.5B model as published, against the same teacher, prompts and tasks.
"$distill" eval --teacher "$models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" \
  --student "$models/qwen2.5-coder-0.5b-instruct.gguf" --prompts examples/code/heldout.jsonl --max-tokens 64 \
  --code-tasks "$humaneval" --no-speed -o "$work/baseline.json"
"$distill" run examples/code.toml
