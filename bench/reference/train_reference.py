#!/usr/bin/env python3
"""PyTorch reference for `distill train`: the same student, batches, loss and optimiser, written
independently on torch, to check that distill's training reaches the same held-out loss.

Input is what `distill train CONFIG --export-reference DIR` writes: DIR/student (HF layout),
DIR/config.toml (resolved run config), DIR/train_batches.safetensors, DIR/eval_batches.safetensors.
The model is a plain Llama (RMSNorm, rotate-half RoPE at per-token positions, GQA attention masked
causally within packed segments, SwiGLU, tied or untied head) in float32; the optimiser is
torch.optim.AdamW with the same warmup + cosine schedule and global-norm clipping.

    python bench/reference/train_reference.py DIR --out reference.json

Prints held-out KL / top-1 before training and at every eval_every step, and writes them (and the
per-step training loss) as JSON.
"""

import argparse
import json
import math
import time
import tomllib
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

NEG_BIG = -1e9


class Llama(torch.nn.Module):
    def __init__(self, cfg: dict, weights: dict):
        super().__init__()
        self.cfg = cfg
        self.names = sorted(weights)
        self.params = torch.nn.ParameterList([torch.nn.Parameter(weights[n].float().clone()) for n in self.names])
        self.index = {n: i for i, n in enumerate(self.names)}
        self.heads = cfg["num_attention_heads"]
        self.kv_heads = cfg["num_key_value_heads"]
        self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // self.heads
        self.eps = cfg["rms_norm_eps"]
        half = self.head_dim // 2
        self.inv_freq = 1.0 / (cfg.get("rope_theta", 10000.0) ** (torch.arange(0, half, dtype=torch.float64) / half))

    def w(self, name: str) -> torch.Tensor:
        return self.params[self.index[name]]

    def head(self) -> torch.Tensor:
        return self.w("lm_head.weight") if "lm_head.weight" in self.index else self.w("model.embed_tokens.weight")

    def rms(self, x, name):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w(name)

    def rope(self, x, cos, sin):
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    def hidden(self, ids, positions, segments):
        b, t = ids.shape
        angles = positions.double()[..., None] * self.inv_freq  # (B, T, D/2)
        cos, sin = angles.cos().float()[:, None], angles.sin().float()[:, None]  # (B, 1, T, D/2)
        causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
        allowed = causal[None] & (segments[:, :, None] == segments[:, None, :])  # (B, T, T)
        mask = torch.where(allowed, 0.0, float("-inf"))[:, None]  # (B, 1, T, T)
        x = self.w("model.embed_tokens.weight")[ids]
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = self.rms(x, p + "input_layernorm.weight")

            def proj(name):
                out = h @ self.w(p + f"self_attn.{name}.weight").T
                bias = p + f"self_attn.{name}.bias"
                return out + self.w(bias) if bias in self.index else out

            q = proj("q_proj").view(b, t, self.heads, self.head_dim).transpose(1, 2)
            k = proj("k_proj").view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
            v = proj("v_proj").view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
            rep = self.heads // self.kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + mask
            att = torch.softmax(scores, dim=-1) @ v
            att = att.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)
            x = x + att @ self.w(p + "self_attn.o_proj.weight").T
            h = self.rms(x, p + "post_attention_layernorm.weight")
            gate = F.silu(h @ self.w(p + "mlp.gate_proj.weight").T)
            x = x + (gate * (h @ self.w(p + "mlp.up_proj.weight").T)) @ self.w(p + "mlp.down_proj.weight").T
        return self.rms(x, "model.norm.weight")


def kl(a, b):
    """KL(exp a || exp b) over the last dimension."""
    return (a.exp() * (a - b)).sum(-1)


def log_mix(a, w, b):
    return torch.logaddexp(a + math.log(w), b + math.log(1 - w))


def position_losses(logits, topk_ids, topk_lp, tail_lp, target_ids, loss_cfg):
    """Per-position loss (N), as documented in crates/train/src/loss.rs."""
    tau = loss_cfg["temperature"]
    kd_weight = loss_cfg["kd_weight"]
    lp = torch.log_softmax(logits / tau, dim=-1)
    student_top = lp.gather(1, topk_ids)
    masked = lp.scatter(1, topk_ids, NEG_BIG)
    student = torch.cat([student_top, torch.logsumexp(masked, dim=-1, keepdim=True)], dim=1)
    teacher = torch.cat([topk_lp, tail_lp.clamp(NEG_BIG, 0.0)[:, None]], dim=1)
    if tau != 1.0:
        teacher = torch.log_softmax(teacher / tau, dim=-1)
    div = loss_cfg["divergence"]
    kind = div["type"]
    if kind == "forward_kl" or (kind == "jsd" and div["beta"] <= 0):
        kd = kl(teacher, student)
    elif kind == "reverse_kl" or (kind == "jsd" and div["beta"] >= 1):
        kd = kl(student, teacher)
    elif kind == "jsd":
        beta = div["beta"]
        m = log_mix(teacher, beta, student)
        kd = beta * kl(teacher, m) + (1 - beta) * kl(student, m)
    elif kind == "skew_kl":
        kd = kl(teacher, log_mix(teacher, div["alpha"], student))
    elif kind == "total_variation":
        kd = 0.5 * (teacher.exp() - student.exp()).abs().sum(-1)
    else:
        raise SystemExit(f"unknown divergence {kind}")
    ce_lp = lp if tau == 1.0 else torch.log_softmax(logits, dim=-1)
    ce = -ce_lp.gather(1, target_ids[:, None])[:, 0]
    return kd_weight * kd + (1 - kd_weight) * ce


def select(batch, s):
    """The masked positions of micro-batch s: hidden-state index and their targets."""
    mask = batch["loss_mask"][s].reshape(-1) > 0
    k = batch["topk_ids"].shape[-1]
    return (
        mask,
        batch["topk_ids"][s].reshape(-1, k)[mask].long(),
        batch["topk_logprobs"][s].reshape(-1, k)[mask],
        batch["tail_logprobs"][s].reshape(-1)[mask],
        batch["target_ids"][s].reshape(-1)[mask].long(),
    )


def run_batch(model, batch, s):
    ids = batch["input_ids"][s].long()
    hidden = model.hidden(ids, batch["position_ids"][s].long(), batch["segment_ids"][s].long())
    return hidden.reshape(-1, hidden.shape[-1])


@torch.no_grad()
def evaluate(model, batches):
    forward_kl = {"type": "forward_kl"}
    total, agree, count = 0.0, 0, 0
    for s in range(batches["input_ids"].shape[0]):
        mask, ids, lp, tail, target = select(batches, s)
        logits = run_batch(model, batches, s)[mask] @ model.head().T
        cfg = {"temperature": 1.0, "kd_weight": 1.0, "divergence": forward_kl}
        total += position_losses(logits, ids, lp, tail, target, cfg).double().sum().item()
        agree += (logits.argmax(-1) == ids[:, 0]).sum().item()
        count += int(mask.sum())
    return {"eval_kl": total / count, "eval_top1": agree / count, "eval_tokens": count}


def lr_at(step, sched):
    """distill's Schedule::lr for the 0-based optimiser step."""
    peak, warmup, total, floor_ratio = sched
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    floor = peak * floor_ratio
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path, help="directory written by distill train --export-reference")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = tomllib.loads((args.dir / "config.toml").read_text())
    model_cfg = json.loads((args.dir / "student" / "config.json").read_text())
    model = Llama(model_cfg, load_file(args.dir / "student" / "model.safetensors"))
    train = load_file(args.dir / "train_batches.safetensors")
    eval_path = args.dir / "eval_batches.safetensors"
    held_out = load_file(eval_path) if eval_path.exists() else None

    opt = cfg["optimizer"]
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=opt["lr"],
        betas=(opt["beta1"], opt["beta2"]),
        eps=opt["eps"],
        weight_decay=opt["weight_decay"],
    )
    sched = (opt["lr"], cfg["schedule"]["warmup"], cfg["steps"], cfg["schedule"]["min_lr_ratio"])
    accum, clip = cfg["grad_accum"], cfg.get("clip_grad_norm")
    curve, evals = [], []
    if held_out is not None:
        evals.append({"step": 0, **evaluate(model, held_out)})
        print(json.dumps(evals[-1]), flush=True)
    started, tokens = time.time(), 0
    for step in range(cfg["steps"]):
        optimizer.zero_grad(set_to_none=True)
        losses = []
        for micro in range(accum):
            s = step * accum + micro
            mask, ids, lp, tail, target = select(train, s)
            logits = run_batch(model, train, s)[mask] @ model.head().T
            loss = position_losses(logits, ids, lp, tail, target, cfg["loss"]).mean()
            (loss / accum).backward()
            losses.append(loss.item())
            tokens += int(mask.sum())
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, sched)
        optimizer.step()
        curve.append({"step": step + 1, "loss": sum(losses) / len(losses)})
        n = step + 1
        if held_out is not None and (n % cfg["eval_every"] == 0 or n == cfg["steps"]):
            evals.append({"step": n, **evaluate(model, held_out)})
            print(json.dumps(evals[-1]), flush=True)
    elapsed = time.time() - started
    result = {"train": curve, "eval": evals, "tokens": tokens, "seconds": elapsed, "torch": torch.__version__}
    print(f"reference: {cfg['steps']} steps, {tokens} target tokens in {elapsed:.1f} s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
