#!/usr/bin/env python3
"""Train a distill student with PyTorch DistributedDataParallel, on the batches distill packs.

For scaling a run out past one machine's distill trainer: the student, the data order, the
losses, AdamW, the warmup + cosine schedule and gradient clipping are distill's, so the curves
match `distill train` on the same config (bench/torch_ddp.sh measures it). Runs on CPUs with the
gloo backend and on GPUs with nccl.

    distill train run.toml --export-reference ref/     # initial student + resolved config, no training
    torchrun --nproc_per_node 2 examples/python/train_ddp.py ref/ --out runs/torch
    distill export runs/torch/final -o student.q8_0.gguf --type q8_0

Each process takes every N-th micro-batch of distill's batch stream, so the config's
`grad_accum` must be a multiple of the number of processes: with grad_accum = A and N processes,
an optimiser step averages the same A micro-batches `distill train` would. Writes
OUT/metrics.jsonl (as distill does) and, at the end, OUT/final (HF layout, loadable by distill).
Needs `pip install '.[torch]' safetensors` (torch, safetensors, and the distill package).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
import tomllib
from pathlib import Path

import torch
import torch.distributed as dist

from distill import Dataset
from distill.torch import Llama, PackedBatches, position_losses, to_tensors


def lr_at(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """distill's schedule at 0-based optimiser step `step`: linear warmup, then cosine to a floor."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    floor = peak * min_ratio
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def loss_options(loss: dict) -> dict:
    div = loss.get("divergence", {"type": "forward_kl"})
    return {
        "divergence_type": div["type"],
        "beta": div.get("beta", 0.5),
        "alpha": div.get("alpha", 0.1),
        "kd_weight": loss.get("kd_weight", 1.0),
        "temperature": loss.get("temperature", 1.0),
    }


def batch_loss(model, batch: dict, options: dict) -> tuple[torch.Tensor, int]:
    """Mean loss over the micro-batch's scored positions; the head runs on those positions only."""
    mask = batch["loss_mask"].reshape(-1) > 0
    logits = model(batch["input_ids"], batch["position_ids"], batch["segment_ids"], select=mask)
    k = batch["topk_ids"].shape[-1]
    losses = position_losses(
        logits,
        batch["topk_ids"].reshape(-1, k)[mask],
        batch["topk_logprobs"].reshape(-1, k)[mask],
        batch["tail_logprobs"].reshape(-1)[mask],
        batch["target_ids"].reshape(-1)[mask],
        **options,
    )
    return losses.mean(), int(mask.sum())


@torch.no_grad()
def evaluate(model: Llama, dataset: str, seq_len: int, batch_size: int) -> dict:
    """Held-out forward KL and top-1 agreement, over distill's fixed evaluation order."""
    total, agree, count = 0.0, 0, 0
    for batch in Dataset(dataset).batches(seq_len, batch_size, seed=0, epoch=0):
        b = to_tensors(batch)
        mask = b["loss_mask"].reshape(-1) > 0
        logits = model(b["input_ids"], b["position_ids"], b["segment_ids"], select=mask)
        k = b["topk_ids"].shape[-1]
        ids = b["topk_ids"].reshape(-1, k)[mask]
        kl = position_losses(logits, ids, b["topk_logprobs"].reshape(-1, k)[mask], b["tail_logprobs"].reshape(-1)[mask])
        total += kl.double().sum().item()
        agree += (logits.argmax(-1) == ids[:, 0]).sum().item()
        count += int(mask.sum())
    return {"eval_kl": total / max(count, 1), "eval_top1": agree / max(count, 1), "eval_tokens": count}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference", type=Path, help="directory written by `distill train CONFIG --export-reference DIR`")
    ap.add_argument("--out", type=Path, required=True, help="run directory: metrics.jsonl, final/")
    ap.add_argument("--backend", default=None, help="gloo (CPU, the default without CUDA) or nccl")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per process")
    args = ap.parse_args()

    backend = args.backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = tomllib.loads((args.reference / "config.toml").read_text())
    accum = cfg["grad_accum"]
    if accum % world:
        raise SystemExit(f"grad_accum = {accum} is not a multiple of the {world} processes: set grad_accum = {world} × k")
    local_accum = accum // world

    torch.manual_seed(0)
    model = Llama.from_pretrained(str(args.reference / "student"))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = cfg["optimizer"]
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=opt["lr"], betas=(opt["beta1"], opt["beta2"]), eps=opt["eps"], weight_decay=opt["weight_decay"]
    )
    sched = cfg["schedule"]
    options = loss_options(cfg.get("loss", {}))
    # Epoch after epoch, as distill's batch stream: each epoch reshuffled with seed + epoch.
    batches = iter(
        PackedBatches(cfg["dataset"], cfg["seq_len"], cfg["batch_size"], seed=cfg.get("seed", 0), epochs=1_000_000, rank=rank, world_size=world)
    )
    held_out = cfg.get("eval_dataset")
    args.out.mkdir(parents=True, exist_ok=True)
    metrics = open(args.out / "metrics.jsonl", "w") if rank == 0 else None

    def log(line: dict) -> None:
        if metrics:
            metrics.write(json.dumps(line) + "\n")
            metrics.flush()
            print(json.dumps(line), flush=True)

    if held_out and rank == 0:
        log({"step": 0, **evaluate(model, held_out, cfg["seq_len"], cfg["batch_size"])})
    started, tokens = time.time(), 0
    for step in range(cfg["steps"]):
        optimizer.zero_grad(set_to_none=True)
        losses, step_tokens = [], 0
        for micro in range(local_accum):
            batch = next(batches)
            sync = micro == local_accum - 1
            # Gradients are averaged across processes once, after the last local micro-batch.
            with contextlib.nullcontext() if sync else ddp.no_sync():
                loss, n = batch_loss(ddp, batch, options)
                (loss / local_accum).backward()
            losses.append(loss.detach())
            step_tokens += n
        # The step's mean loss over all processes' micro-batches, as distill logs it.
        mean = torch.stack(losses).sum()
        counts = torch.tensor([float(step_tokens)])
        dist.all_reduce(mean)
        dist.all_reduce(counts)
        tokens += int(counts.item())
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.get("clip_grad_norm") or float("inf"))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, opt["lr"], sched["warmup"], cfg["steps"], sched["min_lr_ratio"])
        optimizer.step()
        n = step + 1
        log({"step": n, "loss": mean.item() / accum, "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm.item(),
             "tokens": tokens, "tokens_per_s": tokens / (time.time() - started)})
        if held_out and rank == 0 and (n % cfg["eval_every"] == 0 or n == cfg["steps"]):
            log({"step": n, **evaluate(model, held_out, cfg["seq_len"], cfg["batch_size"])})
    if rank == 0:
        model.save_pretrained(str(args.out / "final"))
        print(f"{cfg['steps']} steps, {tokens} target tokens in {time.time() - started:.1f} s on {world} processes; "
              f"student in {args.out / 'final'}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
