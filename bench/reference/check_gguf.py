#!/usr/bin/env python3
"""Checks GGUF files written by `distill export` in llama.cpp (llama-cpp-python).

For each file and each prompt: greedy continuation in llama.cpp versus `distill generate` (greedy)
on the same file and on the unquantised student directory, reported as the number of leading
tokens that agree, and whether the texts are identical.

    pip install llama-cpp-python==0.3.36
    python3 bench/reference/check_gguf.py --distill target/release/distill --student RUN/final \
        --gguf a.f16.gguf b.q8_0.gguf --prompts examples/support/heldout.jsonl --n 5 --out result.json
"""

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
from llama_cpp import Llama


def chatml(content: str) -> str:
    return f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"


def llama_greedy(llm: Llama, prompt: str, max_tokens: int) -> str:
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(max_tokens):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if nxt == llm.token_eos() or llm.detokenize([nxt], special=True) == b"<|im_end|>":
            break
        out.append(nxt)
        llm.eval([nxt])
    return llm.detokenize(out).decode("utf-8", errors="replace")


def distill_greedy(binary: str, model: str, prompt: str, max_tokens: int) -> str:
    run = subprocess.run(
        [binary, "generate", "--model", model, "--max-tokens", str(max_tokens), "--json", prompt],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(run.stdout)["text"]


def common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--distill", required=True)
    ap.add_argument("--student", required=True, help="the unquantised student (HF directory)")
    ap.add_argument("--gguf", nargs="+", required=True)
    ap.add_argument("--prompts", type=Path, required=True, help="JSONL with chat messages")
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    prompts = []
    for line in args.prompts.read_text().splitlines()[: args.n]:
        prompts.append(chatml(json.loads(line)["messages"][-1]["content"]))
    reference = [distill_greedy(args.distill, args.student, p, args.max_tokens) for p in prompts]
    results = {}
    for path in args.gguf:
        llm = Llama(model_path=path, n_ctx=1024, logits_all=True, n_threads=2, seed=0, verbose=False)
        rows = []
        for prompt, student_text in zip(prompts, reference):
            theirs = llama_greedy(llm, prompt, args.max_tokens)
            ours = distill_greedy(args.distill, path, prompt, args.max_tokens)
            rows.append(
                {
                    "llama_cpp": theirs,
                    "distill_same_file": ours,
                    "distill_student_f32": student_text,
                    "identical_same_file": theirs == ours,
                    "identical_to_f32_student": theirs == student_text,
                    "common_prefix_chars_same_file": common_prefix(theirs, ours),
                }
            )
        same = sum(r["identical_same_file"] for r in rows)
        vs_f32 = sum(r["identical_to_f32_student"] for r in rows)
        print(f"{path}: llama.cpp greedy == distill greedy on the same file for {same}/{len(rows)} prompts; == the f32 student for {vs_f32}/{len(rows)}")
        for r in rows:
            if not r["identical_same_file"]:
                print(f"  llama.cpp: {r['llama_cpp']!r}\n  distill:   {r['distill_same_file']!r}")
        results[path] = rows
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
