#!/usr/bin/env bash
# The second sweep behind examples/quickstart.toml (bench/results/quickstart_sweep.md, "Second
# round"): variants of the quickstart itself, each run by `distill run` from examples/quickstart.toml
# with a few lines changed (no exports), then its student evaluated against the teacher (greedy, 32
# tokens) on the shipped held-out prompts, on bench/quickstart/independent.jsonl (split into the
# questions with and without a system message), and on bench/quickstart/independent-2.jsonl, 24
# questions with six system messages that no variant was picked on. One line per variant.
#
#   bash bench/quickstart_pipeline_sweep.sh                  # every variant (about an hour on 2 cores)
#   VARIANTS="full_t03_sys" bash bench/quickstart_pipeline_sweep.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
work="${WORK:-/tmp/distill-quickstart-pipeline-sweep}"
mkdir -p "$work"
grep '"system"' bench/quickstart/independent.jsonl > "$work/independent-system.jsonl"
grep -v '"system"' bench/quickstart/independent.jsonl > "$work/independent-plain.jsonl"

# name  teacher temperature  narrow student?  system messages?
variants=(
  "narrow_t07|0.7|narrow|"
  "full_t07|0.7||"
  "narrow_greedy|0.0|narrow|"
  "full_greedy|0.0||"
  "full_t03|0.3||"
  "narrow_t07_sys|0.7|narrow|sys"
  "full_t07_sys|0.7||sys"
  "full_greedy_sys|0.0||sys"
  "full_t03_sys|0.3||sys"
)
for v in "${variants[@]}"; do
  IFS='|' read -r name temp narrow sys <<< "$v"
  if [[ -n "${VARIANTS:-}" && " $VARIANTS " != *" $name "* ]]; then continue; fi
  run="$work/$name"
  rm -rf "$run"
  sed -e "s|^output = .*|output = \"$run\"|" \
      -e "s|^temperature = .*|temperature = $temp|" \
      -e "s|^types = .*|types = []|" \
      examples/quickstart.toml > "$work/$name.toml"
  [[ -n $narrow ]] && sed -i 's|^num_layers = 10.*|num_layers = 10\nintermediate_size = 768\nnum_attention_heads = 6|' "$work/$name.toml"
  [[ -z $sys ]] && sed -i '/^system_prompts = /d' "$work/$name.toml"
  start=$(date +%s)
  "$distill" run "$work/$name.toml" > "$work/$name.log" 2>&1
  seconds=$(($(date +%s) - start))
  evaluate() { # PROMPTS [OOD] OUT
    local ood=(); [[ $# == 3 ]] && ood=(--ood-prompts "$2")
    "$distill" eval --student "$run/train/final" --teacher "$teacher" --prompts "$1" "${ood[@]}" \
      --max-tokens 32 --no-speed -o "${@: -1}" > /dev/null 2>&1
  }
  evaluate examples/support/heldout.jsonl bench/quickstart/independent.jsonl "$run/eval.json"
  evaluate "$work/independent-plain.jsonl" "$work/independent-system.jsonl" "$run/split.json"
  evaluate bench/quickstart/independent-2.jsonl "$run/independent-2.json"
  python3 - "$name" "$run" "$seconds" <<'PY'
import json, sys
name, run, seconds = sys.argv[1], sys.argv[2], sys.argv[3]
load = lambda f: json.load(open(f"{run}/{f}"))
def fig(s):
    t, r = s["tokens"], s["repetition"]
    return (f"KL {t['kl_forward']:.2f} top-1 {t['top1_agreement']:.3f} ROUGE-L {s['rouge_l']:.3f} "
            f"rep {r['student']['seq_rep_4']:.3f}/{r['teacher']['seq_rep_4']:.3f}")
e, split, two = load("eval.json"), load("split.json"), load("independent-2.json")
print(f"{name:<16} run {seconds:>4} s | held-out {fig(e['in_domain'])} | independent {fig(e['out_of_domain'])} "
      f"(ROUGE-L without / with a system message {split['in_domain']['rouge_l']:.3f} / "
      f"{split['out_of_domain']['rouge_l']:.3f}) | independent-2 {fig(two['in_domain'])}")
PY
done
