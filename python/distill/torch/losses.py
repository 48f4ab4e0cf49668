"""distill's distillation losses in PyTorch, with the definitions of ``crates/train/src/loss.rs``.

The teacher signal holds, per position, the top-K token ids with log-probabilities and the log of
the remaining mass (the tail). Teacher and student are compared on the same K + 1 buckets: the K
tokens, and "any other token", whose student probability is the student's mass outside the K ids.
So every divergence is exact on that partition, not a renormalised top-K guess.

With p the teacher and q the student over the buckets (nats):

- ``forward_kl``: sum p (ln p - ln q)
- ``reverse_kl``: sum q (ln q - ln p)
- ``jsd`` (generalized, as TRL's GKD): with m = beta p + (1 - beta) q,
  beta KL(p||m) + (1 - beta) KL(q||m); beta 0 is forward KL, beta 1 reverse KL
- ``skew_kl`` (DistiLLM): KL(p || alpha p + (1 - alpha) q)
- ``total_variation``: 1/2 sum |p - q|

The loss is ``kd_weight * divergence + (1 - kd_weight) * cross-entropy`` on the sampled tokens,
averaged over positions. At temperature tau != 1 the student is softmax(z / tau) and the teacher's
buckets are softened the same way; cross-entropy uses the untempered student.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

NEG_BIG = -1e9


def _kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KL(exp a || exp b) over the last dimension."""
    return (a.exp() * (a - b)).sum(-1)


def _log_mix(a: torch.Tensor, w: float, b: torch.Tensor) -> torch.Tensor:
    """ln(w exp(a) + (1 - w) exp(b))."""
    return torch.logaddexp(a + math.log(w), b + math.log(1.0 - w))


def student_buckets(logits: torch.Tensor, topk_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The student's log-probabilities over the teacher's K ids and the tail bucket: (N, K + 1)."""
    lp = torch.log_softmax(logits.float() / temperature, dim=-1)
    top = lp.gather(1, topk_ids)
    outside = lp.scatter(1, topk_ids, NEG_BIG)
    return torch.cat([top, torch.logsumexp(outside, dim=-1, keepdim=True)], dim=1)


def teacher_buckets(topk_logprobs: torch.Tensor, tail_logprobs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The teacher's log-probabilities over its K ids and the tail: (N, K + 1)."""
    teacher = torch.cat([topk_logprobs.float(), tail_logprobs.float().clamp(NEG_BIG, 0.0)[:, None]], dim=1)
    if temperature != 1.0:
        teacher = torch.log_softmax(teacher / temperature, dim=-1)
    return teacher


def divergence(student: torch.Tensor, teacher: torch.Tensor, kind: str = "forward_kl", beta: float = 0.5, alpha: float = 0.1) -> torch.Tensor:
    """The divergence of each row of bucket log-probabilities (N, K + 1) -> (N)."""
    if kind == "forward_kl" or (kind == "jsd" and beta <= 0.0):
        return _kl(teacher, student)
    if kind == "reverse_kl" or (kind == "jsd" and beta >= 1.0):
        return _kl(student, teacher)
    if kind == "jsd":
        m = _log_mix(teacher, beta, student)
        return beta * _kl(teacher, m) + (1.0 - beta) * _kl(student, m)
    if kind == "skew_kl":
        return _kl(teacher, _log_mix(teacher, alpha, student))
    if kind == "total_variation":
        return 0.5 * (teacher.exp() - student.exp()).abs().sum(-1)
    raise ValueError(f"unknown divergence {kind!r} (forward_kl, reverse_kl, jsd, skew_kl, total_variation)")


def position_losses(
    logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_logprobs: torch.Tensor,
    target_ids: Optional[torch.Tensor] = None,
    *,
    divergence_type: str = "forward_kl",
    beta: float = 0.5,
    alpha: float = 0.1,
    kd_weight: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The loss of each scored position. ``logits`` (N, V) are the student's at the N positions
    that carry a teacher signal; ``topk_ids`` (N, K) int64, ``topk_logprobs`` (N, K),
    ``tail_logprobs`` (N) and ``target_ids`` (N, the sampled next tokens; needed when
    ``kd_weight < 1``) come from the dataset at the same positions."""
    student = student_buckets(logits, topk_ids, temperature)
    teacher = teacher_buckets(topk_logprobs, tail_logprobs, temperature)
    kd = divergence(student, teacher, divergence_type, beta, alpha)
    if kd_weight >= 1.0:
        return kd
    if target_ids is None:
        raise ValueError("kd_weight < 1 mixes in cross-entropy on the sampled tokens: pass target_ids")
    lp = torch.log_softmax(logits.float(), dim=-1)
    ce = -lp.gather(1, target_ids[:, None])[:, 0]
    return kd_weight * kd + (1.0 - kd_weight) * ce


def distillation_loss(logits: torch.Tensor, batch: dict, **options) -> torch.Tensor:
    """Mean loss over the positions of a packed batch (from ``Dataset.batches`` or
    ``PackedBatches``) whose ``loss_mask`` is set; ``logits`` (B, L, V) are the student's over
    the batch's ``input_ids``. ``options`` as :func:`position_losses` (``divergence_type``,
    ``beta``, ``alpha``, ``kd_weight``, ``temperature``)."""
    mask = batch["loss_mask"].reshape(-1) > 0
    k = batch["topk_ids"].shape[-1]
    losses = position_losses(
        logits.reshape(-1, logits.shape[-1])[mask],
        batch["topk_ids"].reshape(-1, k)[mask].long(),
        batch["topk_logprobs"].reshape(-1, k)[mask],
        batch["tail_logprobs"].reshape(-1)[mask],
        batch["target_ids"].reshape(-1)[mask].long(),
        **options,
    )
    return losses.mean()
