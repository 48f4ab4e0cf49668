#!/usr/bin/env bash
# Fan-out to a teacher cluster: `distill generate --dataset` with the teacher behind one
# OpenAI-compatible endpoint vs two, each endpoint a `distill serve` of the default teacher limited
# to one core (RAYON_NUM_THREADS=1), so that the two endpoints stand for two machines on this
# 2-core box. Runs alternate (one, two, one, two); prints completion tokens/s and the ratio, best of
# two each, and writes bench/results/remote_fanout.txt.
#
# Usage: bench/remote_fanout.sh [WORK_DIR] [PROMPTS]
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-target/bench/remote_fanout}"
prompts="${2:-examples/support/heldout.jsonl}"
source bench/common.sh
mkdir -p "$work"
rm -f "$work"/serve.db*
key=$("$distill" keys create --db "$work/serve.db" --name bench)
ports=()
pids=()
for i in 1 2; do
  port=$(free_port)
  RAYON_NUM_THREADS=1 "$distill" serve "$teacher" --db "$work/serve.db" --name teacher --port "$port" \
    --max-batch 32 2> "$work/serve-$i.log" &
  pids+=($!)
  ports+=("$port")
done
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for port in "${ports[@]}"; do
  wait_up "http://127.0.0.1:$port/health"
done
run() { # run NAME URL...
  local name=$1; shift
  local urls=()
  for u in "$@"; do urls+=(--teacher-url "$u"); done
  rm -rf "$work/$name"
  DISTILL_TEACHER_API_KEY="$key" "$distill" generate --model "$teacher" --prompts-file "$prompts" \
    --dataset "$work/$name" --k 20 --max-tokens 32 --teacher-concurrency 16 "${urls[@]}" 2> "$work/$name.log" >/dev/null
  grep -o 'this run: [0-9]* tokens in [0-9.]* s' "$work/$name.log" | awk '{printf "%.1f\n", $3 / $6}'
}
one=() two=()
for round in 1 2; do
  one+=("$(run one-$round "http://127.0.0.1:${ports[0]}")")
  two+=("$(run two-$round "http://127.0.0.1:${ports[0]}" "http://127.0.0.1:${ports[1]}")")
done
best() { printf '%s\n' "$@" | sort -g | tail -1; }
b1=$(best "${one[@]}"); b2=$(best "${two[@]}")
{
  echo "remote teacher fan-out ($(wc -l < "$prompts") prompts, 32 tokens, top-20; endpoints = distill serve, 1 core each)"
  echo "one endpoint:  ${one[*]} completion tokens/s (best $b1)"
  echo "two endpoints: ${two[*]} completion tokens/s (best $b2)"
  python3 -c "print(f'two / one = {$b2 / $b1:.2f}x')"
} | tee bench/results/remote_fanout.txt
