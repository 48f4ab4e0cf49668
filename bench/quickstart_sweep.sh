#!/usr/bin/env bash
# The sweep behind examples/quickstart.toml's student: each variant is trained on a teacher-signal
# dataset of the default teacher and evaluated against it (greedy, 32 tokens) on the shipped
# held-out prompts and on bench/quickstart/independent.jsonl, 30 support questions written apart
# from the training templates (other phrasings, some with a system message). Prints one line per
# variant: held-out and independent KL(teacher‖student), top-1 agreement, ROUGE-L, and seq-rep-4
# of student / teacher. Results in bench/results/quickstart_sweep.md.
#
#   bash bench/quickstart_sweep.sh                 # every variant below (a few hours on 2 cores)
#   VARIANTS="auto10_mix_160" bash bench/quickstart_sweep.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
work="${WORK:-/tmp/distill-quickstart-sweep}"
mkdir -p "$work/runs"

dataset() { # NAME PROMPT_FILES...
  local name=$1; shift
  cat "$@" > "$work/$name.jsonl"
  "$distill" generate --dataset "$work/$name" --prompts-file "$work/$name.jsonl" \
    --max-tokens 48 --temperature 0.7 --top-p 0.95 --k 32 >&2
}
dataset shipped examples/support/train.jsonl
dataset mix examples/support/train.jsonl bench/quickstart/synthesized.jsonl
dataset heldout examples/support/heldout.jsonl

# name  dataset  steps  lr  student (TOML lines)
variants=(
  "every3_narrow_40|shipped|40|5e-4|keep_every = 3\nintermediate_size = 768\nnum_attention_heads = 6"
  "every3_narrow_160|shipped|160|5e-4|keep_every = 3\nintermediate_size = 768\nnum_attention_heads = 6"
  "spread10_160|shipped|160|5e-4|keep_layers = [0, 3, 6, 9, 12, 16, 19, 22, 25, 29]"
  "spread10_mix_160|mix|160|5e-4|keep_layers = [0, 3, 6, 9, 12, 16, 19, 22, 25, 29]"
  "auto10_160|shipped|160|5e-4|num_layers = 10"
  "auto10_narrow_160|shipped|160|5e-4|num_layers = 10\nintermediate_size = 768\nnum_attention_heads = 6"
  "auto10_100_lr1e-3|shipped|100|1e-3|num_layers = 10"
  "auto10_160_lr1e-3|shipped|160|1e-3|num_layers = 10"
  "auto10_narrow_100_lr1e-3|shipped|100|1e-3|num_layers = 10\nintermediate_size = 768\nnum_attention_heads = 6"
  "auto10_narrow_160_lr1e-3|shipped|160|1e-3|num_layers = 10\nintermediate_size = 768\nnum_attention_heads = 6"
)
for v in "${variants[@]}"; do
  IFS='|' read -r name data steps lr student <<< "$v"
  if [[ -n "${VARIANTS:-}" && " $VARIANTS " != *" $name "* ]]; then continue; fi
  run="$work/runs/$name"
  rm -rf "$run"
  cat > "$work/$name.toml" <<TOML
dataset = "$work/$data"
eval_dataset = "$work/heldout"
output = "$run"
steps = $steps
batch_size = 4
seq_len = 160
eval_every = $((steps / 4))
[student]
type = "prune"
from = "$teacher"
$(echo -e "$student")
[loss]
divergence = { type = "forward_kl" }
[optimizer]
lr = $lr
TOML
  start=$(date +%s)
  "$distill" train "$work/$name.toml" > "$work/$name.train.log" 2>&1
  trained=$(date +%s)
  "$distill" eval --student "$run/final" --teacher "$teacher" --prompts examples/support/heldout.jsonl \
    --ood-prompts bench/quickstart/independent.jsonl --max-tokens 32 --no-speed -o "$run/eval.json" > "$work/$name.eval.log" 2>&1
  python3 - "$name" "$run/eval.json" $((trained - start)) <<'PY'
import json, sys
name, path, seconds = sys.argv[1], sys.argv[2], sys.argv[3]
e = json.load(open(path))
def fig(s):
    t, r = s["tokens"], s["repetition"]
    return (f"KL {t['kl_forward']:.2f} top-1 {t['top1_agreement']:.3f} ROUGE-L {s['rouge_l']:.3f} "
            f"seq-rep-4 {r['student']['seq_rep_4']:.3f}/{r['teacher']['seq_rep_4']:.3f}")
print(f"{name:<24} train {seconds:>4} s | held-out {fig(e['in_domain'])} | independent {fig(e['out_of_domain'])}")
PY
done
