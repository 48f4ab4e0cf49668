#!/usr/bin/env bash
# Extraction guard replay benchmark: two days of traffic from ~1,000 benign keys (BIG-bench's
# human-written task inputs; 2% of them applications at a harvester's volume) with attackers on
# the second day (templated harvesting, a dataset walk, chain-of-thought elicitation, logprob
# sweeps, one harvester spread over 8 keys, three of each). The distribution test is calibrated on
# separate benign traffic (other keys, other seed). Prints detection latency (requests until the
# first action), the benign false-positive rate and the guard's time per request, and writes
# bench/results/guard_replay.json and guard_replay.txt.
#
# Usage: bench/guard_replay.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-target/bench/guard_replay}"
home="${DISTILL_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/distill}"
mkdir -p "$work" "$home/bench"
cargo build --release --locked -j "${CARGO_BUILD_JOBS:-2}" -p distill-cli
distill="$PWD/target/release/distill"

inputs="$home/bench/bigbench_inputs.json"
if [[ ! -s $inputs ]]; then
  python3 -m pip download --no-deps --no-binary :all: -d "$home/bench" bigbench==1.0.0
  python3 bench/guard/bigbench_inputs.py "$home/bench/bigbench-1.0.0.tar.gz" "$inputs"
fi
python3 bench/guard/make_traffic.py "$inputs" "$work/traffic.jsonl" --seed 1
python3 bench/guard/make_traffic.py "$inputs" "$work/calibration.jsonl" --seed 2 --benign 400 --calibration
"$distill" guard calibrate "$work/calibration.jsonl" -o "$work/guard.toml"

{
  echo "# uncalibrated (defaults)"
  "$distill" guard replay "$work/traffic.jsonl" --decisions "$work/decisions-default.jsonl" 2>&1 >/dev/null | tail -1
  python3 bench/guard/score.py "$work/traffic.jsonl" "$work/decisions-default.jsonl" | grep -v '^  '
  echo "# calibrated distribution test (bench/results/guard_replay.json)"
  "$distill" guard replay "$work/traffic.jsonl" --config "$work/guard.toml" --decisions "$work/decisions.jsonl" \
    2>&1 >/dev/null | tail -1
  python3 bench/guard/score.py "$work/traffic.jsonl" "$work/decisions.jsonl" --json bench/results/guard_replay.json
} | tee bench/results/guard_replay.txt
