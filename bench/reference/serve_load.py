"""Load test of an OpenAI-compatible server: C concurrent streaming chat requests (the official
`openai` async client), repeated R times; reports time-to-first-token p50/p99, per-stream and
total decode throughput, and errors, as JSON.

Usage: python3 serve_load.py BASE_URL KEY MODEL [--concurrency 64] [--max-tokens 32] [--rounds 1]
"""
import argparse
import asyncio
import json
import statistics
import time

import openai

PROMPTS = [line for line in (json.loads(l) for l in open("examples/support/heldout.jsonl"))]


def percentile(values, q):
    values = sorted(values)
    if not values:
        return None
    i = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[i]


async def one(client, model, messages, max_tokens):
    started = time.perf_counter()
    first = None
    tokens = 0
    chunks = 0
    stream = await client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
            if first is None:
                first = time.perf_counter() - started
        if getattr(chunk, "usage", None) is not None:
            tokens = chunk.usage.completion_tokens
    # Servers without `stream_options.include_usage` (llama-cpp-python's): one chunk per token.
    return first, tokens or chunks, time.perf_counter() - started


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("base_url")
    p.add_argument("key")
    p.add_argument("model")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=1)
    a = p.parse_args()
    client = openai.AsyncOpenAI(base_url=f"{a.base_url}/v1", api_key=a.key, max_retries=0, timeout=600)
    ttft, per_stream, errors, total_tokens = [], [], [], 0
    started = time.perf_counter()
    for r in range(a.rounds):
        jobs = []
        for i in range(a.concurrency):
            prompt = PROMPTS[(r * a.concurrency + i) % len(PROMPTS)]
            jobs.append(one(client, a.model, prompt["messages"][:1] if "messages" in prompt else
                            [{"role": "user", "content": prompt["prompt"]}], a.max_tokens))
        for result in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(result, Exception):
                errors.append(repr(result)[:200])
                continue
            first, tokens, elapsed = result
            if first is not None:
                ttft.append(first)
            total_tokens += tokens
            if tokens > 1 and first is not None and elapsed > first:
                per_stream.append((tokens - 1) / (elapsed - first))
    wall = time.perf_counter() - started
    print(json.dumps({
        "streams": a.concurrency * a.rounds,
        "concurrency": a.concurrency,
        "max_tokens": a.max_tokens,
        "errors": len(errors),
        "error_examples": errors[:3],
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p99_s": percentile(ttft, 99),
        "per_stream_tok_s_p50": percentile(per_stream, 50),
        "total_completion_tokens": total_tokens,
        "total_tok_s": total_tokens / wall,
        "wall_s": wall,
    }))


asyncio.run(main())
