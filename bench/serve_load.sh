#!/usr/bin/env bash
# Serving under load: 64 concurrent streaming chat requests (the official `openai` async client,
# bench/reference/serve_load.py) against `distill serve` and against llama.cpp's own server with
# continuous batching (the xllamacpp wheel, as many parallel slots as streams:
# bench/reference/xllamacpp_server.py), both serving the same GGUF on loopback, one after the
# other in the same run. Prints time-to-first-token p50/p99, throughput and each server's peak
# RSS, and writes bench/results/serve_load[-MODEL].json.
#
# Usage: bench/serve_load.sh [WORK_DIR] [CONCURRENCY] [MAX_TOKENS] [MODEL]
#   MODEL: a scripts/fetch-teacher.sh name (default smollm2, the default teacher)
# Needs: pip install openai xllamacpp
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-target/bench/serve_load}"
concurrency="${2:-64}"
max_tokens="${3:-32}"
model="${4:-smollm2}"
source bench/common.sh
teacher="$(bash scripts/fetch-teacher.sh "$model" | tail -1 | sed 's/^[a-z ]*: //')"
results=bench/results/serve_load.json
[[ $model == smollm2 ]] || results="bench/results/serve_load-$model.json"
mkdir -p "$work"
rm -f "$work"/serve.db*
peak_rss_mib() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

# load NAME PID PORT: the single-stream and the loaded run against one server, and its peak RSS
# after each (after one stream: the weights and the server, with a negligible KV cache).
load() {
  wait_up "http://127.0.0.1:$3/v1/models"
  # llama.cpp's server answers 503 while it loads the model: wait for /health to say 200.
  for _ in $(seq 1 240); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$3/health" || true) == 200 ]] && break
    sleep 0.5
  done
  for c in 1 "$concurrency"; do
    python3 bench/reference/serve_load.py "http://127.0.0.1:$3" "$key" teacher --concurrency "$c" \
      --max-tokens "$max_tokens" > "$work/$1-$c.json"
    [[ $c == 1 ]] && peak_rss_mib "$2" > "$work/$1-rss-1.txt"
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
python3 bench/reference/xllamacpp_server.py "$teacher" "$port" "$key" --parallel "$concurrency" \
  --threads "$(nproc)" > "$work/llama-serve.log" 2>&1 &
trap "kill $! 2>/dev/null || true" EXIT
load llama $! "$port"

python3 - "$work" "$concurrency" "$results" <<'PY'
import json, sys
work, c, results = sys.argv[1], sys.argv[2], sys.argv[3]
load = lambda name: json.load(open(f"{work}/{name}.json"))
result = {"concurrency": int(c)}
for tool, name in (("distill", "distill"), ("llama.cpp", "llama")):
    rss = int(open(f"{work}/{name}-rss.txt").read())
    rss_single = int(open(f"{work}/{name}-rss-1.txt").read())
    result[tool] = {"single": load(f"{name}-1"), "loaded": load(f"{name}-{c}"), "peak_rss_mib": rss,
                    "peak_rss_single_mib": rss_single}
print(f"{'server':<10} {'1 stream tok/s':>15} {'RSS':>9} {c + ' streams: TTFT p50':>22} {'p99':>7} {'total tok/s':>12} {'errors':>7} {'peak RSS':>9}")
for tool in ("distill", "llama.cpp"):
    r = result[tool]
    s, l = r["single"], r["loaded"]
    print(f"{tool:<10} {s['per_stream_tok_s_p50'] or 0:>15.1f} {r['peak_rss_single_mib']:>5} MiB {l['ttft_p50_s']:>20.2f} s {l['ttft_p99_s']:>5.2f} s"
          f" {l['total_tok_s']:>12.1f} {l['errors']:>7} {r['peak_rss_mib']:>6} MiB")
d, q = result["distill"]["loaded"], result["llama.cpp"]["loaded"]
print(f"distill / llama.cpp at {c} streams: total throughput {d['total_tok_s'] / q['total_tok_s']:.2f}x, "
      f"TTFT p99 {q['ttft_p99_s'] / d['ttft_p99_s']:.2f}x lower")
json.dump(result, open(results, "w"), indent=2)
PY
