#!/usr/bin/env python3
"""PyTorch's half of bench/gpu.sh: the shapes `gpu_bench` times, in eager PyTorch on the same GPU.

    python3 bench/reference/gpu_torch.py train --size 0.5b --batch 8 --seq 512 --steps 10
    python3 bench/reference/gpu_torch.py score --size 1.5b --batch 8 --seq 512 --reps 3

train: a Qwen2-shaped student (transformers' Qwen2ForCausalLM from a config, random weights,
sdpa attention, no torch.compile) with f32 master weights under bf16 autocast, AdamW, the
distillation loss distill uses (forward KL over the teacher's top-k + tail buckets, 0.5 weight of
cross-entropy); tokens/s and peak allocated memory.
score: the teacher's all-position top-k log-probabilities (the signal `distill generate
--dataset` stores), in the model's dtype; tokens/s.

Prints one JSON line per run, as gpu_bench does.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

SIZES = {
    "0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
}


def model(size: str, dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**SIZES[size], max_position_embeddings=4096, rope_theta=1e6, rms_norm_eps=1e-6,
                      attn_implementation="sdpa")
    torch.manual_seed(1)
    return Qwen2ForCausalLM(cfg).to(device="cuda", dtype=dtype)


def batch(vocab, b, l, k, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, vocab, (b, l), generator=g)
    topk_ids = torch.randint(0, vocab, (b, l, k), generator=g)
    w = torch.exp(-0.7 * torch.arange(k).float() - 0.5 * torch.rand(b, l, k, generator=g))
    topk_lp = torch.log(0.9 * w / w.sum(-1, keepdim=True))
    return [t.cuda() for t in (ids, topk_ids, topk_lp)]


def kd_loss(logits, ids, topk_ids, topk_lp, kd_weight=0.5):
    """Forward KL over the teacher's top-k + tail buckets, plus cross-entropy, on positions 1/4.. ."""
    l = ids.shape[1]
    start = l // 4
    z = logits[:, start:-1].float()
    lp = F.log_softmax(z, -1)
    s_top = lp.gather(-1, topk_ids[:, start:-1])
    s_tail = torch.log1p(-s_top.exp().sum(-1).clamp(max=1 - 1e-6)).unsqueeze(-1)
    t = torch.cat([topk_lp[:, start:-1], torch.full_like(s_tail, torch.log(torch.tensor(0.1)).item())], -1)
    s = torch.cat([s_top, s_tail], -1)
    kl = (t.exp() * (t - s)).sum(-1).mean()
    ce = -lp.gather(-1, ids[:, start + 1:].unsqueeze(-1)).mean()
    return kd_weight * kl + (1 - kd_weight) * ce


def train(a):
    m = model(a.size, torch.float32)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.01)
    batches = [batch(m.config.vocab_size, a.batch, a.seq, a.k, s) for s in range(4)]
    torch.cuda.reset_peak_memory_stats()
    losses = []
    for step in range(2 + a.steps):
        if step == 2:
            torch.cuda.synchronize()
            started = time.perf_counter()
        ids, topk_ids, topk_lp = batches[step % 4]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = m(input_ids=ids).logits
        loss = kd_loss(logits, ids, topk_ids, topk_lp)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    torch.cuda.synchronize()
    secs = time.perf_counter() - started
    print(json.dumps({"bench": "train", "tool": "pytorch", "torch": torch.__version__, "batch": a.batch, "seq": a.seq,
                      "tokens_per_s": a.steps * a.batch * a.seq / secs,
                      "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
                      "loss_first": losses[0], "loss_last": losses[-1]}))


@torch.no_grad()
def score(a):
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    m = model(a.size, dtype).eval()
    ids = batch(m.config.vocab_size, a.batch, a.seq, a.k, 9)[0]
    for rep in range(1 + a.reps):
        if rep == 1:
            torch.cuda.synchronize()
            started = time.perf_counter()
        logits = m(input_ids=ids).logits.float()
        lp = F.log_softmax(logits, -1)
        values, top = lp.topk(a.k, -1)
        values.cpu(), top.cpu()
    torch.cuda.synchronize()
    secs = time.perf_counter() - started
    print(json.dumps({"bench": "score", "tool": "pytorch", "dtype": a.dtype, "batch": a.batch, "seq": a.seq,
                      "tokens_per_s": a.reps * a.batch * a.seq / secs,
                      "peak_allocated_bytes": torch.cuda.max_memory_allocated()}))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["train", "score"])
    p.add_argument("--size", default="0.5b", choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    a = p.parse_args()
    train(a) if a.what == "train" else score(a)
