#!/usr/bin/env bash
# On-policy (GKD) vs offline-only distillation at an equal teacher-token budget, on the shipped
# support task. Offline: the student (teacher cut to every third layer) trains 30 steps on the
# teacher's completions of all 240 training prompts (its top-32 at every token). On-policy: the
# teacher completes only the first 120 prompts; half of the micro-batches are instead the
# student's own completions (8 per micro-batch, ≤ 64 tokens, sampled at T = 1) of the 240
# prompts, scored by the teacher inside the loop and trained with JSD(0.5). The script prints and
# records both budgets and both students' held-out KL in each direction (`distill eval` on the 60
# held-out prompts), on the teacher's greedy text and on each student's own greedy text (where
# reverse KL, an expectation under the student, is measured as the student will be used).
#
# Usage: [BETA=0.5] [STEPS=30] [START=0] [FRACTION=0.5] [ROLLOUTS=8] [ROLLOUT_T=1] [TAIL=bucket]
#        [MAX_TOKENS=64] [SEED=0] [SKIP_OFFLINE=1] bench/on_policy.sh [WORK_DIR]
# START > 0 trains the on-policy run offline only for its first START steps (a KD warm-up);
# FRACTION is λ, the share of micro-batches after it that are rollouts, ROLLOUTS the completions
# per rollout micro-batch and ROLLOUT_T their sampling temperature; TAIL=uniform (with BETA=1)
# spreads the teacher's tail evenly over the tokens outside its top-K in the rollouts' reverse KL;
# MAX_TOKENS caps both the teacher's completions and the rollouts (give each value its own
# WORK_DIR: the teacher datasets there are reused). SEED sets both runs' data order and the
# rollouts' sampling (the teacher's datasets stay those of seed 0, so seeds share them).
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-target/bench/on_policy}"
source bench/common.sh
mkdir -p "$work"
head -120 examples/support/train.jsonl > "$work/train-half.jsonl"
max_tokens="${MAX_TOKENS:-64}"
sample=(--k 32 --max-tokens "$max_tokens" --temperature 0.7 --top-p 0.95 --seed 0)
[[ -f "$work/data-full/manifest.json" ]] ||
  "$distill" generate --model "$teacher" --dataset "$work/data-full" --prompts-file examples/support/train.jsonl "${sample[@]}"
[[ -f "$work/data-half/manifest.json" ]] ||
  "$distill" generate --model "$teacher" --dataset "$work/data-half" --prompts-file "$work/train-half.jsonl" "${sample[@]}"

beta="${BETA:-0.5}"
steps="${STEPS:-30}"
start="${START:-0}"
fraction="${FRACTION:-0.5}"
rollouts="${ROLLOUTS:-8}"
rollout_t="${ROLLOUT_T:-1}"
tail_model="${TAIL:-bucket}"
seed="${SEED:-0}"
runs=(offline on-policy)
[[ -n "${SKIP_OFFLINE:-}" && -f "$work/eval-offline-seed$seed.json" ]] && runs=(on-policy)
for run in "${runs[@]}"; do
  data=$([[ $run == offline ]] && echo data-full || echo data-half)
  cat > "$work/$run.toml" <<TOML
dataset = "$work/$data"
output = "$work/run-$run"
steps = $steps
batch_size = 4
seq_len = $((max_tokens + 128))
checkpoint_every = 1000
seed = $seed

[student]
type = "prune"
from = "$teacher"
keep_every = 3

[optimizer]
lr = 5e-4
TOML
  if [[ $run == on-policy ]]; then
    cat >> "$work/$run.toml" <<TOML

[on_policy]
teacher = "$teacher"
prompts = "examples/support/train.jsonl"
fraction = $fraction
start_step = $start
beta = $beta
rollouts = $rollouts
max_tokens = $max_tokens
temperature = $rollout_t
tail = "$tail_model"
TOML
  fi
  rm -rf "$work/run-$run"
  "$distill" train "$work/$run.toml"
  "$distill" eval --student "$work/run-$run/final" --teacher "$teacher" --prompts examples/support/heldout.jsonl \
    --max-tokens "$max_tokens" --no-speed -o "$work/eval-$run.json" > "$work/eval-$run.txt"
  cp "$work/eval-$run.json" "$work/eval-$run-seed$seed.json"
done

python3 - "$work" "$beta" "$steps" "$start" "$fraction" "$rollouts" "$rollout_t" "$tail_model" "$max_tokens" "$seed" <<'PY'
import json, sys
tail_model, max_tokens, seed = sys.argv[8], int(sys.argv[9]), int(sys.argv[10])
work, beta, steps, start = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fraction, rollouts, rollout_t = float(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
def dataset_tokens(name):
    m = json.load(open(f"{work}/{name}/manifest.json"))
    return sum(s["tokens"] for s in m["shards"])
def rollout_tokens(run):
    lines = [json.loads(l) for l in open(f"{work}/run-{run}/metrics.jsonl")]
    return max([l.get("rollout_teacher_tokens", 0) for l in lines] or [0])
result = {"beta": beta, "steps": steps, "start_step": start, "fraction": fraction,
          "rollouts": rollouts, "rollout_temperature": rollout_t, "tail": tail_model, "max_tokens": max_tokens,
          "seed": seed}
for run, data in (("offline", "data-full"), ("on-policy", "data-half")):
    e = json.load(open(f"{work}/eval-{run}-seed{seed}.json"))["in_domain"]
    t, own = e["tokens"], e["tokens_on_student_text"]
    result[run] = {
        "teacher_tokens": dataset_tokens(data) + rollout_tokens(run),
        "dataset_tokens": dataset_tokens(data),
        "rollout_tokens": rollout_tokens(run),
        "heldout_kl_reverse": t["kl_reverse"],
        "heldout_kl_forward": t["kl_forward"],
        "heldout_top1": t["top1_agreement"],
        "own_text_kl_reverse": own["kl_reverse"],
        "own_text_kl_forward": own["kl_forward"],
        "own_text_tokens": own["positions"],
        # Greedy text against the teacher's: a collapsed student (one sentence repeated for
        # every prompt) can score a low reverse KL on its own text, and shows here.
        "heldout_rouge_l": e["rouge_l"],
    }
for run, r in ((k, v) for k, v in result.items() if isinstance(v, dict)):
    print(f"{run:<10} teacher tokens {r['teacher_tokens']:>6} ({r['dataset_tokens']} offline + {r['rollout_tokens']} rollout)"
          f"  held-out KL(s||t) {r['heldout_kl_reverse']:.3f}  KL(t||s) {r['heldout_kl_forward']:.3f}  top-1 {r['heldout_top1']:.3f}"
          f"  on its own text: KL(s||t) {r['own_text_kl_reverse']:.3f}  KL(t||s) {r['own_text_kl_forward']:.3f}"
          f"  ROUGE-L {r['heldout_rouge_l']:.3f}")
suffix = f"_steps{steps}_start{start}" if (steps, start) != (30, 0) else ""
if (fraction, rollouts, rollout_t) != (0.5, 8, 1.0):
    suffix += f"_lambda{fraction:g}_rollouts{rollouts}_t{rollout_t:g}"
if tail_model != "bucket":
    suffix += f"_tail-{tail_model}"
if max_tokens != 64:
    suffix += f"_tokens{max_tokens}"
if seed != 0:
    suffix += f"_seed{seed}"
json.dump(result, open(f"bench/results/on_policy_beta{beta:g}{suffix}.json", "w"), indent=2)
PY
