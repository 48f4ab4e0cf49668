"""Reference values of the distillation losses, computed independently in float64 NumPy.

Writes tests/fixtures/losses.json: random student logits and a teacher top-k signal (ids,
log-probs, tail), and for each loss configuration the mean loss and its gradient with respect to
the student logits (central finite differences in float64). The definitions follow TRL's GKD
(generalized JSD) and DistiLLM (skew KL); see crates/train/src/loss.rs.
Run: python3 tests/reference/make_loss_fixtures.py
"""

import json
from pathlib import Path

import numpy as np

rng = np.random.default_rng(7)
N, V, K = 6, 40, 5


def log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


# Teacher: a peaked full distribution, of which the top-K and the tail are kept.
teacher_full = log_softmax(rng.normal(0, 3, (N, V)))
topk_ids = np.argsort(-teacher_full, 1)[:, :K]
topk_lp = np.take_along_axis(teacher_full, topk_ids, 1)
tail_lp = np.log1p(-np.exp(topk_lp).sum(1))
target_ids = rng.integers(0, V, N)
mask = np.array([1, 1, 0, 1, 1, 1], dtype=np.float64)
student = rng.normal(0, 2, (N, V))


def buckets(z, tau):
    lp = log_softmax(z / tau)
    s_top = np.take_along_axis(lp, topk_ids, 1)
    outside = np.ones_like(lp, dtype=bool)
    np.put_along_axis(outside, topk_ids, False, 1)
    s_tail = np.log(np.where(outside, np.exp(lp), 0).sum(1))
    s = np.concatenate([s_top, s_tail[:, None]], 1)
    t = np.concatenate([topk_lp, tail_lp[:, None]], 1)
    if tau != 1.0:
        t = log_softmax(t / tau)
    return s, t


def kl(a, b):
    return (np.exp(a) * (a - b)).sum(1)


def mix(a, w, b):
    return np.log(w * np.exp(a) + (1 - w) * np.exp(b))


def reverse_kl_uniform_tail(z, tau):
    """Full-vocabulary KL(q || p) with the teacher's (tempered) tail mass spread evenly over the
    V - K tokens outside its top-K."""
    q = log_softmax(z / tau)
    _, t = buckets(z, tau)
    p = np.repeat(t[:, K:] - np.log(V - K), V, 1)
    np.put_along_axis(p, topk_ids, t[:, :K], 1)
    return (np.exp(q) * (q - p)).sum(1)


def loss(z, cfg):
    tau, alpha = cfg["temperature"], cfg["kd_weight"]
    s, t = buckets(z, tau)
    d = cfg["divergence"]
    kind = d["type"]
    if cfg.get("tail") == "uniform":
        assert kind == "reverse_kl" or (kind == "jsd" and d["beta"] == 1.0)
        kd = reverse_kl_uniform_tail(z, tau)
    elif kind == "forward_kl":
        kd = kl(t, s)
    elif kind == "reverse_kl":
        kd = kl(s, t)
    elif kind == "jsd":
        b = d["beta"]
        m = mix(t, b, s)
        kd = b * kl(t, m) + (1 - b) * kl(s, m)
    elif kind == "skew_kl":
        kd = kl(t, mix(t, d["alpha"], s))
    elif kind == "total_variation":
        kd = 0.5 * np.abs(np.exp(t) - np.exp(s)).sum(1)
    ce = -np.take_along_axis(log_softmax(z), target_ids[:, None], 1)[:, 0]
    per = alpha * kd + (1 - alpha) * ce
    return (per * mask).sum() / mask.sum()


configs = [
    {"divergence": {"type": "forward_kl"}, "kd_weight": 1.0, "temperature": 1.0},
    {"divergence": {"type": "reverse_kl"}, "kd_weight": 1.0, "temperature": 1.0},
    {"divergence": {"type": "jsd", "beta": 0.5}, "kd_weight": 1.0, "temperature": 1.0},
    {"divergence": {"type": "jsd", "beta": 0.1}, "kd_weight": 1.0, "temperature": 2.0},
    {"divergence": {"type": "skew_kl", "alpha": 0.1}, "kd_weight": 1.0, "temperature": 1.0},
    {"divergence": {"type": "total_variation"}, "kd_weight": 1.0, "temperature": 1.0},
    {"divergence": {"type": "forward_kl"}, "kd_weight": 0.5, "temperature": 1.0},
    {"divergence": {"type": "forward_kl"}, "kd_weight": 0.0, "temperature": 1.0},
    {"divergence": {"type": "reverse_kl"}, "kd_weight": 1.0, "temperature": 1.0, "tail": "uniform"},
    {"divergence": {"type": "jsd", "beta": 1.0}, "kd_weight": 0.5, "temperature": 2.0, "tail": "uniform"},
]
cases = []
eps = 1e-6
for cfg in configs:
    value = loss(student, cfg)
    grad = np.zeros_like(student)
    for i in range(N):
        for j in range(V):
            up, down = student.copy(), student.copy()
            up[i, j] += eps
            down[i, j] -= eps
            grad[i, j] = (loss(up, cfg) - loss(down, cfg)) / (2 * eps)
    cases.append({"config": cfg, "loss": value, "grad": grad.ravel().tolist()})

out = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "losses.json"
out.write_text(json.dumps({
    "n": N, "v": V, "k": K,
    "student_logits": student.ravel().tolist(),
    "topk_ids": topk_ids.ravel().tolist(),
    "topk_logprobs": topk_lp.ravel().tolist(),
    "tail_logprobs": tail_lp.tolist(),
    "target_ids": target_ids.tolist(),
    "mask": mask.tolist(),
    "cases": cases,
}) + "\n")
print("wrote", out, [round(c["loss"], 6) for c in cases])
