#!/usr/bin/env python3
"""llama.cpp's own OpenAI-compatible server with continuous batching, from the prebuilt
`xllamacpp` wheel, for bench/serve_load.sh: serves MODEL.gguf on 127.0.0.1:PORT as `teacher` with
N parallel slots sharing one context of N × 512 tokens, until killed.

    python3 xllamacpp_server.py MODEL.gguf PORT API_KEY [--parallel 64] [--threads 2]
"""

import argparse
import signal
import time

import xllamacpp


def params(model, threads, parallel, n_ctx):
    """llama.cpp's settings for MODEL: `parallel` slots sharing `n_ctx` tokens, `threads` threads
    for decoding and for prompt batches alike (also what llamacpp_decode.py runs)."""
    p = xllamacpp.CommonParams()
    p.model.path = model
    p.n_parallel = parallel
    p.n_ctx = n_ctx
    p.cpuparams.n_threads = threads
    p.cpuparams_batch.n_threads = threads
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("port", type=int)
    ap.add_argument("api_key")
    ap.add_argument("--parallel", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    settings = params(args.model, args.threads, args.parallel, 512 * args.parallel)
    settings.model_alias = "teacher"
    settings.port = args.port
    settings.api_keys = [args.api_key]
    settings.cont_batching = True
    server = xllamacpp.Server(settings)
    signal.signal(signal.SIGTERM, lambda *_: exit(0))
    while True:
        time.sleep(3600)
    del server


if __name__ == "__main__":
    main()
