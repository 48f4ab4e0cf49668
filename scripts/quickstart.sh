#!/usr/bin/env bash
# The quickstart: fetch the default teacher, build distill, and run the main job on it.
# Today the main job is generation with the teacher; distillation (`distill run`) joins it as it lands.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-teacher.sh
cargo build --release --locked -j "${CARGO_BUILD_JOBS:-2}" -p distill-cli
distill=target/release/distill
echo
echo "== one prompt, streamed (greedy) =="
"$distill" generate --chat --max-tokens 96 "A customer writes: my order arrived damaged. Reply politely and explain the next steps."
echo
echo "== a batch of prompts from a JSONL file =="
"$distill" generate --prompts-file examples/prompts.jsonl --max-tokens 48 --temperature 0.7 --top-p 0.9 --seed 1
echo
echo "== a teacher-signal dataset from the shipped support prompts (first 16), then its summary =="
head -16 examples/support/train.jsonl > target/quickstart-prompts.jsonl
"$distill" generate --dataset target/quickstart-dataset --prompts-file target/quickstart-prompts.jsonl \
  --k 32 --max-tokens 48 --temperature 0.7 --top-p 0.95 --seed 1
"$distill" inspect target/quickstart-dataset
