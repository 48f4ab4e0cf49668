#!/usr/bin/env bash
# Serving under load: 64 concurrent streaming chat requests (the official `openai` async client,
# bench/reference/serve_load.py) against `distill serve` and against llama.cpp's OpenAI server
# (llama-cpp-python's `llama_cpp.server`, interrupt_requests off so every stream completes), both
# serving the default teacher GGUF on loopback, one after the other in the same run. Prints
# time-to-first-token p50/p99, throughput and each server's peak RSS, and writes
# bench/results/serve_load.json.
#
# Usage: bench/serve_load.sh [WORK_DIR] [CONCURRENCY] [MAX_TOKENS]
# Needs: pip install openai 'llama-cpp-python[server]==0.3.36'
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-target/bench/serve_load}"
concurrency="${2:-64}"
max_tokens="${3:-32}"
source bench/common.sh
mkdir -p "$work"
rm -f "$work"/serve.db*
peak_rss_mib() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

# load NAME PID PORT: the single-stream and the loaded run against one server, then its peak RSS.
load() {
  wait_up "http://127.0.0.1:$3/v1/models"
  for c in 1 "$concurrency"; do
    python3 bench/reference/serve_load.py "http://127.0.0.1:$3" "$key" teacher --concurrency "$c" \
      --max-tokens "$max_tokens" > "$work/$1-$c.json"
  done
  peak_rss_mib "$2" > "$work/$1-rss.txt"
  kill "$2"; wait "$2" 2>/dev/null || true
}

key=$("$distill" keys create --db "$work/serve.db" --name bench)
port=$(free_port)
"$distill" serve "$teacher" --db "$work/serve.db" --name teacher --port "$port" --max-batch "$concurrency" \
  2> "$work/distill-serve.log" &
trap "kill $! 2>/dev/null || true" EXIT
load distill $! "$port"

port=$(free_port)
python3 -m llama_cpp.server --model "$teacher" --model_alias teacher --port "$port" --n_threads "$(nproc)" \
  --n_ctx 4096 --interrupt_requests False --api_key "$key" > "$work/llama-serve.log" 2>&1 &
trap "kill $! 2>/dev/null || true" EXIT
load llama $! "$port"

python3 - "$work" "$concurrency" <<'PY'
import json, sys
work, c = sys.argv[1], sys.argv[2]
load = lambda name: json.load(open(f"{work}/{name}.json"))
result = {"concurrency": int(c)}
for tool, name in (("distill", "distill"), ("llama.cpp", "llama")):
    rss = int(open(f"{work}/{name}-rss.txt").read())
    result[tool] = {"single": load(f"{name}-1"), "loaded": load(f"{name}-{c}"), "peak_rss_mib": rss}
print(f"{'server':<10} {'1 stream tok/s':>15} {c + ' streams: TTFT p50':>22} {'p99':>7} {'total tok/s':>12} {'errors':>7} {'peak RSS':>9}")
for tool in ("distill", "llama.cpp"):
    r = result[tool]
    s, l = r["single"], r["loaded"]
    print(f"{tool:<10} {s['per_stream_tok_s_p50'] or 0:>15.1f} {l['ttft_p50_s']:>20.2f} s {l['ttft_p99_s']:>5.2f} s"
          f" {l['total_tok_s']:>12.1f} {l['errors']:>7} {r['peak_rss_mib']:>6} MiB")
d, q = result["distill"]["loaded"], result["llama.cpp"]["loaded"]
print(f"distill / llama.cpp at {c} streams: total throughput {d['total_tok_s'] / q['total_tok_s']:.2f}x, "
      f"TTFT p99 {q['ttft_p99_s'] / d['ttft_p99_s']:.2f}x lower")
json.dump(result, open("bench/results/serve_load.json", "w"), indent=2)
PY
