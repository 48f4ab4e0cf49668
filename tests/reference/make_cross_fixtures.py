"""Cross-tokenizer loss fixtures: GOLD, ULD and sequence-level KD written from the papers'
definitions in float64 PyTorch, with the gradient with respect to the student's logits from
autograd. Writes tests/fixtures/cross_losses.json, read by crates/train/src/cross/step.rs.

Definitions (see crates/train/src/cross/loss.rs): both tokenizations of one completion are split
into byte-aligned groups; each side's distribution over a group's first token is scaled by the
probability of its own later tokens in the group; matched tokens (same bytes) compare by the
generalized KL of unnormalised measures, the rest by sorted-probability L1 plus the leftover mass.
"""
import json
import pathlib

import torch

torch.manual_seed(7)
VS, VT, K = 14, 17, 4  # student vocab, teacher vocab, teacher top-K
FLOOR = -50.0


def groups_of(s_ends, t_ends):
    """Shortest spans closing on a boundary of both tokenizations."""
    out, s, t, s0, t0 = [], 0, 0, 0, 0
    while s < len(s_ends) and t < len(t_ends):
        if s_ends[s] < t_ends[t]:
            s += 1
        elif s_ends[s] > t_ends[t]:
            t += 1
        else:
            s, t = s + 1, t + 1
            out.append(((s0, s), (t0, t)))
            s0, t0 = s, t
    if s0 < len(s_ends) and t0 < len(t_ends):
        out.append(((s0, len(s_ends)), (t0, len(t_ends))))
    return out


def random_ends(n_bytes, n_tokens, gen):
    cuts = sorted(torch.randperm(n_bytes - 1, generator=gen)[: n_tokens - 1].add(1).tolist())
    return cuts + [n_bytes]


def loss(logits, case, mode, w):
    lp = torch.log_softmax(logits, dim=-1)  # row i predicts student completion token i
    s_ids, t_ids = case["student_ids"], case["teacher_ids"]
    ce = -torch.stack([lp[i, s] for i, s in enumerate(s_ids)]).mean()
    if mode == "sequence":
        return w["ce"] * ce
    mapping = {t: s for t, s in case["pairs"]}

    def teacher_own(j):
        row = case["topk_ids"][j]
        lpj = case["topk_logprobs"][j][row.index(t_ids[j])] if t_ids[j] in row else case["tails"][j]
        return max(lpj, FLOOR)

    groups = groups_of(case["student_ends"], case["teacher_ends"])
    groups.append(((len(s_ids) - 1, len(s_ids)), (len(t_ids) - 1, len(t_ids))))  # the end of turn
    matched_terms, unmatched_terms = [], []
    for (a, b), (c, d) in groups:
        sigma_s = sum((lp[i, s_ids[i]] for i in range(a + 1, b)), torch.tensor(0.0, dtype=torch.float64))
        sigma_t = sum(teacher_own(j) for j in range(c + 1, d))
        taken, matched, t_unmatched = [], [], []
        for v, lpv in zip(case["topk_ids"][c], case["topk_logprobs"][c]):
            u = mapping.get(v) if mode == "gold" else None
            if u is not None and u not in taken:
                taken.append(u)
                matched.append((u, lpv))
            else:
                t_unmatched.append(lpv)
        order = [u for u in torch.argsort(lp[a].detach(), descending=True).tolist() if u not in taken]
        s_unmatched = order[: len(t_unmatched)]
        m = torch.tensor(0.0, dtype=torch.float64)
        for u, lpv in matched:
            lt = torch.tensor(lpv + sigma_t, dtype=torch.float64)
            ls = lp[a, u] + sigma_s
            m = m + lt.exp() * (lt - ls) - lt.exp() + ls.exp()
        un = torch.tensor(0.0, dtype=torch.float64)
        for lpv, u in zip(t_unmatched, s_unmatched):
            un = un + ((lp[a, u] + sigma_s).exp() - torch.tensor(lpv + sigma_t, dtype=torch.float64).exp()).abs()
        picked = [u for u, _ in matched] + s_unmatched
        rho_s = sigma_s.exp() * (1 - lp[a, picked].exp().sum())
        rho_t = torch.tensor(case["tails"][c] + sigma_t, dtype=torch.float64).exp()
        un = un + (rho_s - rho_t).abs()
        matched_terms.append(m)
        unmatched_terms.append(un)
    kd = w["matched"] * torch.stack(matched_terms).mean() + w["unmatched"] * torch.stack(unmatched_terms).mean()
    return w["ce"] * ce + w["kd"] * kd


def case(gen):
    n_bytes = 24
    ns, nt = 9, 7
    s_ends, t_ends = random_ends(n_bytes, ns, gen), random_ends(n_bytes, nt, gen)
    student_ids = torch.randint(0, VS - 1, (ns,), generator=gen).tolist() + [VS - 1]  # last: end of turn
    teacher_ids = torch.randint(0, VT - 1, (nt,), generator=gen).tolist() + [VT - 1]
    topk_ids, topk_logprobs, tails = [], [], []
    for j, tid in enumerate(teacher_ids):
        logits = torch.randn(VT, generator=gen, dtype=torch.float64) * 2
        if j % 2 == 0:
            logits[tid] += 4  # the sampled token usually in the top-K, not always
        lpj = torch.log_softmax(logits, -1)
        top = torch.topk(lpj, K)
        topk_ids.append(top.indices.tolist())
        topk_logprobs.append(top.values.tolist())
        tails.append(torch.log1p(-top.values.exp().sum()).item())
    # Shared tokens: about half the teacher's, and the ends of turn.
    pairs = [[t, (t * 5 + 3) % (VS - 1)] for t in range(VT - 1) if t % 2 == 0] + [[VT - 1, VS - 1]]
    return {
        "student_ids": student_ids,
        "teacher_ids": teacher_ids,
        "student_ends": s_ends,
        "teacher_ends": t_ends,
        "topk_ids": topk_ids,
        "topk_logprobs": topk_logprobs,
        "tails": tails,
        "pairs": pairs,
    }


def main():
    gen = torch.Generator().manual_seed(11)
    w = {"ce": 0.8, "kd": 1.2, "matched": 1.0, "unmatched": 0.7}
    cases = []
    for mode in ["gold", "uld", "sequence"]:
        c = case(gen)
        logits = (torch.randn(len(c["student_ids"]), VS, generator=gen, dtype=torch.float64) * 1.5).requires_grad_()
        value = loss(logits, c, mode, w)
        value.backward()
        c.update(mode=mode, logits=logits.detach().tolist(), loss=value.item(), grad=logits.grad.tolist())
        cases.append(c)
    out = {"vs": VS, "vt": VT, "k": K, "weights": w, "cases": cases}
    path = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "cross_losses.json"
    path.write_text(json.dumps(out))
    print(f"wrote {path}: " + ", ".join(f"{c['mode']} {c['loss']:.6f}" for c in cases))


if __name__ == "__main__":
    main()
