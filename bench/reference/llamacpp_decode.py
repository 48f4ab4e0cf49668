#!/usr/bin/env python3
"""Single-stream greedy decoding in llama.cpp (the prebuilt `xllamacpp` wheel), for
bench/quant_speed.sh: loads MODEL.gguf, generates N tokens greedily from PROMPT (ignoring EOS,
so every run decodes N), and prints one JSON line: load seconds, decode tokens/s (llama.cpp's own
timing of the generated tokens, prompt excluded), prompt tokens/s and peak RSS in MB.

    python3 llamacpp_decode.py MODEL.gguf PROMPT [--tokens 64] [--threads 2]
"""

import argparse
import json
import resource
import time

import xllamacpp

from xllamacpp_server import params


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("prompt")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    started = time.time()
    server = xllamacpp.Server(params(args.model, args.threads, 1, 2048))
    load = time.time() - started
    request = {"prompt": args.prompt, "n_predict": args.tokens, "temperature": 0, "ignore_eos": True, "cache_prompt": False}
    out = server.handle_completions(request)
    timings = out["timings"]
    print(
        json.dumps(
            {
                "tool": "llama.cpp",
                "load_s": round(load, 3),
                "decode_tok_s": round(timings["predicted_per_second"], 2),
                "generated": timings["predicted_n"],
                "prompt_tok_s": round(timings["prompt_per_second"], 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "text": out["choices"][0]["text"][:80],
            }
        )
    )


if __name__ == "__main__":
    main()
