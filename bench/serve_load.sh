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
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Up when it answers anything over HTTP (401 included).
wait_up() {
  for _ in $(seq 1 120); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$1" || true) != 000 ]] && return 0
    sleep 0.5
  done
  echo "server at $1 did not start" >&2
  return 1
}
peak_rss_mib() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

key=$("$distill" keys create --db "$work/serve.db" --name bench)
port=$(free_port)
"$distill" serve "$teacher" --db "$work/serve.db" --name teacher --port "$port" --max-batch "$concurrency" \
  2> "$work/distill-serve.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
wait_up "http://127.0.0.1:$port/health"
python3 bench/reference/serve_load.py "http://127.0.0.1:$port" "$key" teacher --concurrency 1 --max-tokens "$max_tokens" > "$work/distill-1.json"
python3 bench/reference/serve_load.py "http://127.0.0.1:$port" "$key" teacher --concurrency "$concurrency" --max-tokens "$max_tokens" > "$work/distill-$concurrency.json"
distill_rss=$(peak_rss_mib $pid)
kill $pid; wait $pid 2>/dev/null || true

port=$(free_port)
python3 -m llama_cpp.server --model "$teacher" --model_alias teacher --port "$port" --n_threads "$(nproc)" \
  --n_ctx 4096 --interrupt_requests False --api_key "$key" > "$work/llama-serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
wait_up "http://127.0.0.1:$port/v1/models"
python3 bench/reference/serve_load.py "http://127.0.0.1:$port" "$key" teacher --concurrency 1 --max-tokens "$max_tokens" > "$work/llama-1.json"
python3 bench/reference/serve_load.py "http://127.0.0.1:$port" "$key" teacher --concurrency "$concurrency" --max-tokens "$max_tokens" > "$work/llama-$concurrency.json"
llama_rss=$(peak_rss_mib $pid)
kill $pid; wait $pid 2>/dev/null || true

python3 - "$work" "$concurrency" "$distill_rss" "$llama_rss" <<'PY'
import json, sys
work, c, distill_rss, llama_rss = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
load = lambda name: json.load(open(f"{work}/{name}.json"))
result = {"concurrency": int(c)}
for tool, rss in (("distill", distill_rss), ("llama.cpp", llama_rss)):
    key = "distill" if tool == "distill" else "llama"
    result[tool] = {"single": load(f"{key}-1"), "loaded": load(f"{key}-{c}"), "peak_rss_mib": rss}
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
