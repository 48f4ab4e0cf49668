#!/usr/bin/env python3
"""Checks GGUF files written by `distill export` in llama.cpp itself (the prebuilt `xllamacpp`
wheel): each file loads, and its greedy continuations of chat prompts are compared with
`distill generate` on the same file (leading tokens in agreement, identical texts). Also lists
the element type of each tensor, read with gguf-py when it is installed.

    pip install xllamacpp
    python3 bench/reference/check_kquant.py --distill target/release/distill \
        --gguf a.q4_k_m.gguf b.q6_k.gguf --prompts examples/support/heldout.jsonl --n 5 --out result.json
"""

import argparse
import collections
import json
import subprocess
from pathlib import Path

import xllamacpp

from xllamacpp_server import params


def llama_greedy(server, prompt: str, tokens: int) -> str:
    request = {"prompt": prompt, "n_predict": tokens, "temperature": 0, "cache_prompt": False}
    return server.handle_completions(request)["choices"][0]["text"]


def distill_greedy(distill: str, model: str, prompt: str, tokens: int) -> str:
    out = subprocess.run(
        [distill, "generate", "--model", model, "--json", "--max-tokens", str(tokens), prompt],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.splitlines()[0])["text"]


def types(path: str) -> dict:
    try:
        from gguf import GGUFReader
    except ImportError:
        return {}
    counts = collections.Counter(t.tensor_type.name for t in GGUFReader(path).tensors)
    return dict(counts)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--distill", required=True)
    ap.add_argument("--gguf", nargs="+", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--out")
    args = ap.parse_args()
    lines = [json.loads(l) for l in Path(args.prompts).read_text().splitlines() if l.strip()][: args.n]
    text = lambda l: l["prompt"] if "prompt" in l else l["messages"][-1]["content"]
    prompts = [f"<|im_start|>user\n{text(l)}<|im_end|>\n<|im_start|>assistant\n" for l in lines]
    results = {}
    for path in args.gguf:
        server = xllamacpp.Server(params(path, 2, 1, 1024))
        same, rows = 0, []
        for p in prompts:
            theirs = llama_greedy(server, p, args.tokens)
            ours = distill_greedy(args.distill, path, p, args.tokens)
            lead = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            same += ours == theirs
            rows.append({"prompt": p, "llama.cpp": theirs, "distill": ours, "same_leading_chars": lead})
        del server
        results[path] = {"identical": same, "of": len(prompts), "tensor_types": types(path), "samples": rows}
        print(f"{path}: {same}/{len(prompts)} greedy texts identical to llama.cpp's; types {results[path]['tensor_types']}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
