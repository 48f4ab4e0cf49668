"""Greedy continuations of Gemma-3-270M (Q4_K_M): distill (int8 kernel and --matmuls f32) vs
llama.cpp (llama-cpp-python 0.3.36) on eight prompts, 48 tokens each: how many tokens agree, and
llama.cpp's own top-2 logit margin where they part.

Run:  scripts/fetch-teacher.sh gemma3-270m && cargo build --release -p distill-cli && python3 bench/gemma3_greedy.py
"""
import json, subprocess, sys
import numpy as np
from llama_cpp import Llama
import os
HOME = os.environ.get("DISTILL_HOME", os.path.expanduser("~/.cache/distill"))
G = f"{HOME}/models/gemma3/gemma-3-270m-q4_k_m.gguf"
BIN = os.environ.get("DISTILL_BIN", "target/release/distill")
prompts = ["The three primary colours are", "Once upon a time, in a small village by the sea,",
           "def quicksort(arr):", "The French Revolution began in", "Photosynthesis is the process by which",
           "Customer: My order has not arrived yet.\nSupport agent:", "import numpy as np\n\n# Compute the mean of",
           "The best way to learn a new language is"]
llm = Llama(model_path=G, n_ctx=256, logits_all=True, n_threads=2, seed=0, verbose=False)
N = 48
def distill_ids(p, matmuls):
    args = [BIN, "generate", "-m", G, "--max-tokens", str(N), "--json", "--logprobs", "1"] + (["--matmuls", matmuls] if matmuls else []) + [p]
    out = subprocess.run(args, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return [t["id"] for t in json.loads(out)["logprobs"]]
rows = []
for p in prompts:
    ids = llm.tokenize(p.encode(), add_bos=True, special=True)
    llm.reset(); llm.eval(ids); gen = []; margin_at_split = None
    for _ in range(N):
        s = np.array(llm.scores[llm.n_tokens - 1]); nxt = int(np.argmax(s)); gen.append(nxt); llm.eval([nxt])
    agree = {}
    for m in [None, "f32"]:
        d = distill_ids(p, m)
        k = next((i for i in range(min(len(d), len(gen))) if d[i] != gen[i]), min(len(d), len(gen)))
        agree[m or "int8"] = k
        if m is None and k < N:
            llm.reset(); llm.eval(ids + gen[:k]); s = np.array(llm.scores[llm.n_tokens - 1]); top = np.sort(s)[-2:]
            margin_at_split = float(top[1] - top[0])
    rows.append((p[:40], agree["int8"], agree["f32"], margin_at_split))
    print(json.dumps({"prompt": p[:40], "agree_int8": agree["int8"], "agree_f32": agree["f32"], "llama_cpp_top2_margin_at_split": margin_at_split}), flush=True)
