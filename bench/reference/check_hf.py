#!/usr/bin/env python3
"""Checks an HF directory written by distill (a run's final/ or `distill export -o DIR`) in
Hugging Face transformers, and compares its logits with llama.cpp on the f32 GGUF export of the
same model.

- transformers loads the directory (AutoModelForCausalLM, AutoTokenizer) with no conversion;
- its token ids for the prompts equal llama.cpp's on the GGUF;
- max |logit difference| transformers vs llama.cpp over every prompt position;
- greedy text: transformers vs `distill generate` on the directory;
- log-probabilities: along distill's greedy continuation, max |difference| between distill's
  (`distill generate --json --logprobs 5`: the chosen token and the top 5 at every step) and
  transformers' log-softmax of the same positions.

    pip install transformers torch llama-cpp-python==0.3.36
    distill export RUN/final -o student.f32.gguf --type f32
    python3 bench/reference/check_hf.py --distill target/release/distill --hf RUN/final \
        --gguf student.f32.gguf --prompts examples/support/heldout.jsonl --n 5
"""

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
import torch
from llama_cpp import Llama
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--distill", required=True)
    ap.add_argument("--hf", required=True)
    ap.add_argument("--gguf", required=True, help="f32 GGUF export of the same model")
    ap.add_argument("--prompts", type=Path, required=True)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(args.hf)
    model = AutoModelForCausalLM.from_pretrained(args.hf, torch_dtype=torch.float32).eval()
    llm = Llama(model_path=args.gguf, n_ctx=1024, logits_all=True, n_threads=2, verbose=False)
    rows = []
    for line in args.prompts.read_text().splitlines()[: args.n]:
        messages = json.loads(line)["messages"]
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        llama_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        with torch.no_grad():
            hf_logits = model(torch.tensor([ids])).logits[0].numpy()
        llm.reset()
        llm.eval(llama_ids)
        cpp_logits = np.array(llm.scores[: len(llama_ids)], dtype=np.float32)
        diff = float(np.abs(hf_logits - cpp_logits).max()) if ids == llama_ids else None
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=args.max_tokens, do_sample=False)
        hf_text = tok.decode(gen[0][len(ids):], skip_special_tokens=True)
        ours = subprocess.run(
            [args.distill, "generate", "--model", args.hf, "--max-tokens", str(args.max_tokens), "--json", "--logprobs", "5", prompt],
            check=True,
            capture_output=True,
            text=True,
        )
        ours = json.loads(ours.stdout)
        distill_text = ours["text"]
        steps = ours["logprobs"]
        full = ids + [s["id"] for s in steps]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), dim=-1).numpy()
        lp_diff = 0.0
        for j, step in enumerate(steps):
            row = lp[len(ids) - 1 + j]
            lp_diff = max(lp_diff, abs(row[step["id"]] - step["logprob"]))
            for alt in step["top"]:
                lp_diff = max(lp_diff, abs(row[alt["id"]] - alt["logprob"]))
        rows.append(
            {
                "prompt_tokens": len(ids),
                "same_token_ids": ids == llama_ids,
                "max_abs_logit_diff_transformers_vs_llamacpp": diff,
                "max_abs_logprob_diff_transformers_vs_distill": float(lp_diff),
                "logprob_steps": len(steps),
                "transformers": hf_text,
                "distill": distill_text,
                "same_greedy_text": hf_text.strip() == distill_text.strip(),
            }
        )
        print(json.dumps(rows[-1], ensure_ascii=False))
    diffs = [r["max_abs_logit_diff_transformers_vs_llamacpp"] for r in rows if r["same_token_ids"]]
    print(
        f"transformers {__import__('transformers').__version__}: token ids equal llama.cpp's on {sum(r['same_token_ids'] for r in rows)}/{len(rows)} prompts;"
        f" max |logit diff| vs llama.cpp f32 {max(diffs) if diffs else float('nan'):.4g};"
        f" greedy text equals distill's on {sum(r['same_greedy_text'] for r in rows)}/{len(rows)};"
        f" max |log-prob diff| vs distill {max(r['max_abs_logprob_diff_transformers_vs_distill'] for r in rows):.3g}"
        f" over {sum(r['logprob_steps'] for r in rows)} steps × (chosen + top 5)"
    )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
