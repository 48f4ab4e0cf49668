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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("port", type=int)
    ap.add_argument("api_key")
    ap.add_argument("--parallel", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = "teacher"
    params.port = args.port
    params.api_keys = [args.api_key]
    params.n_parallel = args.parallel
    params.n_ctx = 512 * args.parallel
    params.cont_batching = True
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    server = xllamacpp.Server(params)
    signal.signal(signal.SIGTERM, lambda *_: exit(0))
    while True:
        time.sleep(3600)
    del server


if __name__ == "__main__":
    main()
