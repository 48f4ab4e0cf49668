#!/usr/bin/env python3
"""Teacher scoring in PyTorch and in llama.cpp, for bench/score_speed.sh.

Scores every position of the given token sequences: the teacher's top-k log-probabilities and the
log-sum-exp (what `distill generate --dataset` stores), timing only the scoring itself.

    python3 score_reference.py torch HF_DIR seqs.json [--threads 2]
    python3 score_reference.py torch-bf16 HF_DIR seqs.json [--threads 2]   (autocast to bf16)
    python3 score_reference.py llamacpp MODEL.gguf seqs.json [--threads 2]

seqs.json: {"ids": [[...], ...], "k": 32, "batch": 8}. Prints one JSON line: tokens, seconds.
"""

import argparse
import json
import time

import numpy as np


def torch_score(model_dir, seqs, k, batch, threads, bf16=False):
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokens = 0
    started = time.time()
    # bf16: autocast rounds the matmuls' inputs to bf16 (f32 sums), as `distill --matmuls bf16`.
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), precision:
        for i in range(0, len(seqs), batch):
            group = seqs[i : i + batch]
            longest = max(len(s) for s in group)
            ids = torch.zeros((len(group), longest), dtype=torch.long)
            mask = torch.zeros((len(group), longest), dtype=torch.long)
            for r, s in enumerate(group):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V)
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            top = torch.topk(logits, k, dim=-1)
            _ = (top.values - lse, top.indices)
            tokens += int(mask.sum())
    return tokens, time.time() - started


def llamacpp_score(gguf, seqs, k, threads):
    from llama_cpp import Llama

    longest = max(len(s) for s in seqs)
    llm = Llama(model_path=gguf, n_ctx=max(512, longest + 8), n_batch=512, logits_all=True, n_threads=threads, verbose=False)
    tokens = 0
    started = time.time()
    for s in seqs:
        llm.reset()
        llm.eval(s)
        scores = np.asarray(llm.scores[: len(s)], dtype=np.float32)
        m = scores.max(axis=1, keepdims=True)
        lse = m + np.log(np.exp(scores - m).sum(axis=1, keepdims=True))
        idx = np.argpartition(-scores, k, axis=1)[:, :k]
        _ = np.take_along_axis(scores, idx, axis=1) - lse
        tokens += len(s)
    return tokens, time.time() - started


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tool", choices=["torch", "torch-bf16", "llamacpp"])
    ap.add_argument("model")
    ap.add_argument("seqs")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    spec = json.load(open(args.seqs))
    if args.tool in ("torch", "torch-bf16"):
        bf16 = args.tool == "torch-bf16"
        tokens, seconds = torch_score(args.model, spec["ids"], spec["k"], spec["batch"], args.threads, bf16)
    else:
        tokens, seconds = llamacpp_score(args.model, spec["ids"], spec["k"], args.threads)
    print(json.dumps({"tool": args.tool, "tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds}))


if __name__ == "__main__":
    main()
