#!/usr/bin/env bash
# Quantised GGUF teachers, distill vs llama.cpp on the same files in the same run (issue 23):
# - single-stream greedy decoding of 64 tokens: distill generate (its "decoding N tok/s", the
#   prompt's prefill excluded) vs llama.cpp from the xllamacpp wheel (its own timing of the
#   generated tokens), with each process's load time and peak RSS;
# - teacher scoring: every position of 8 texts of 256 tokens, top-32, batched: distill generate
#   --dataset with the texts given as completions (its "this run" figure), natively and with
#   --matmuls f32 (the dequantised path), vs llama.cpp through llama-cpp-python (logits_all);
# - how far the native path moves the teacher's distributions from the dequantised f32 path
#   (the matmul_fidelity example: KL over the whole vocabulary, mean and max).
# Runs alternate, two rounds; the best of each is reported with the ratios.
#
# Usage: bench/quant_speed.sh [WORK_DIR] [MODEL...]
#   (default target/bench/quant_speed; models: smollm2 qwen2.5-coder-1.5b, fetched if missing)
# Needs: pip install xllamacpp llama-cpp-python==0.3.36 (the latter builds llama.cpp from source).
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-target/bench/quant_speed}"
shift || true
models=("$@")
[[ ${#models[@]} -gt 0 ]] || models=(smollm2 qwen2.5-coder-1.5b)
source bench/common.sh
cargo build --release --locked -j "${CARGO_BUILD_JOBS:-2}" -p distill-models --example matmul_fidelity 2>/dev/null
mkdir -p "$work"
prompt="def fibonacci(n):"
text="$work/text.txt"
cat README.md docs/*.md > "$text"

for name in "${models[@]}"; do
  gguf="$(bash scripts/fetch-teacher.sh "$name" | tail -1 | sed 's/^[a-z ]*: //')"
  out="$work/$name"
  mkdir -p "$out"
  # Eight 256-token texts in llama.cpp's tokenisation, as prompt (one token) + completion.
  python3 - "$gguf" "$text" "$out" <<'PY'
import json, sys
from llama_cpp import Llama
gguf, text, out = sys.argv[1:]
tok = Llama(model_path=gguf, vocab_only=True, verbose=False)
ids = tok.tokenize(open(text, encoding="utf-8").read().encode(), add_bos=False)
seqs = [ids[i * 256 : (i + 1) * 256] for i in range(8)]
json.dump({"ids": seqs, "k": 32, "batch": 8}, open(f"{out}/seqs.json", "w"))
with open(f"{out}/prompts.jsonl", "w") as f:
    for s in seqs:
        f.write(json.dumps({"prompt": tok.detokenize(s[:1]).decode(errors="replace"),
                            "completion": tok.detokenize(s[1:]).decode(errors="replace")}) + "\n")
PY
  for round in 1 2; do
    python3 bench/reference/llamacpp_decode.py "$gguf" "$prompt" --tokens 64 2>/dev/null > "$out/llamacpp-decode-$round.json"
    /usr/bin/time -f "peak_rss_kb %M" "$distill" generate --model "$gguf" --max-tokens 64 "$prompt" \
      2> "$out/distill-decode-$round.log" > /dev/null
    for matmuls in native f32; do
      flag=(); [[ $matmuls == f32 ]] && flag=(--matmuls f32)
      rm -rf "$out/dataset"
      "$distill" generate --model "$gguf" --dataset "$out/dataset" --prompts-file "$out/prompts.jsonl" \
        --k 32 --batch-size 8 "${flag[@]}" 2> "$out/distill-score-$matmuls-$round.log" > /dev/null
    done
    python3 bench/reference/score_reference.py llamacpp "$gguf" "$out/seqs.json" > "$out/llamacpp-score-$round.json"
  done
  target/release/examples/matmul_fidelity "$gguf" "$text" int8 > "$out/fidelity.txt" 2>/dev/null || echo "(fidelity: not run)" > "$out/fidelity.txt"
  python3 - "$out" "$name" "$(stat -c %s "$gguf")" <<'PY'
import json, re, sys
from pathlib import Path
out, name, size = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
best = {}
def keep(key, value, better=max):
    best[key] = better(best[key], value) if key in best else value
for r in (1, 2):
    ll = json.loads((out / f"llamacpp-decode-{r}.json").read_text())
    keep("llamacpp_decode", ll["decode_tok_s"]); keep("llamacpp_load", ll["load_s"], min)
    keep("llamacpp_rss_mb", ll["peak_rss_mb"], min)
    log = (out / f"distill-decode-{r}.log").read_text()
    keep("distill_decode", float(re.search(r"decoding ([0-9.]+) tok/s", log).group(1)))
    keep("distill_load", float(re.search(r"loaded .*\(([0-9.]+) s\)", log).group(1)), min)
    keep("distill_rss_mb", int(re.search(r"peak_rss_kb (\d+)", log).group(1)) / 1024, min)
    for m in ("native", "f32"):
        n, s = re.search(r"this run: (\d+) tokens in ([0-9.]+) s", (out / f"distill-score-{m}-{r}.log").read_text()).groups()
        keep(f"distill_score_{m}", int(n) / float(s))
    keep("llamacpp_score", json.loads((out / f"llamacpp-score-{r}.json").read_text())["tok_s"])
b = best
lines = [
    f"{name} ({size / 1e6:.0f} MB file)",
    f"  decode 64 tokens: distill {b['distill_decode']:.1f} tok/s, llama.cpp {b['llamacpp_decode']:.1f} tok/s "
    f"= {b['distill_decode'] / b['llamacpp_decode']:.2f}x (target >= 1.2x)",
    f"  load: distill {b['distill_load']:.2f} s, llama.cpp {b['llamacpp_load']:.2f} s "
    f"= {b['distill_load'] / b['llamacpp_load']:.2f}x (target <= 2x)",
    f"  peak RSS: distill {b['distill_rss_mb']:.0f} MiB = {b['distill_rss_mb'] * 2**20 / size:.2f}x the file "
    f"(target <= 1.3x), llama.cpp {b['llamacpp_rss_mb']:.0f} MiB",
    f"  scoring (8 x 256 tokens, top-32): distill native {b['distill_score_native']:.0f} tok/s, "
    f"f32 {b['distill_score_f32']:.0f} tok/s, llama.cpp {b['llamacpp_score']:.0f} tok/s: "
    f"native/llama.cpp = {b['distill_score_native'] / b['llamacpp_score']:.2f}x (target >= 3x), "
    f"native/f32 = {b['distill_score_native'] / b['distill_score_f32']:.2f}x (target >= 1.0x)",
    "  fidelity: " + (out / "fidelity.txt").read_text().strip(),
]
print("\n".join(lines))
(out / "summary.txt").write_text("\n".join(lines) + "\n")
PY
done
