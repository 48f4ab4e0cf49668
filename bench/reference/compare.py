#!/usr/bin/env python3
"""Summarises bench/kd_vs_sft.sh: held-out curves of the KD and SFT students, distill vs PyTorch.

    python bench/reference/compare.py WORK_DIR   # writes WORK_DIR/summary.json too
"""

import json
import sys
from pathlib import Path


def distill_evals(run: Path):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = {r["step"]: r for r in rows if "eval_kl" in r}
    seconds = None
    train = [r for r in rows if "loss" in r]
    if train and train[-1].get("tokens_per_s"):
        seconds = train[-1]["tokens"] / train[-1]["tokens_per_s"]
    return evals, seconds


def main():
    work = Path(sys.argv[1])
    summary = {}
    for run in ("kd", "sft"):
        ours, seconds = distill_evals(work / f"run-{run}")
        ref = json.loads((work / f"ref-{run}" / "result.json").read_text())
        theirs = {r["step"]: r for r in ref["eval"]}
        print(f"\n{run.upper()} student: held-out KL(teacher||student) nats / top-1 agreement")
        print(f"{'step':>5} {'distill KL':>11} {'torch KL':>9} {'distill top1':>13} {'torch top1':>11}")
        for step in sorted(ours):
            t = theirs.get(step, {})
            print(
                f"{step:>5} {ours[step]['eval_kl']:>11.4f} {t.get('eval_kl', float('nan')):>9.4f}"
                f" {ours[step]['eval_top1']:>13.4f} {t.get('eval_top1', float('nan')):>11.4f}"
            )
        last = max(ours)
        ratio = ours[last]["eval_kl"] / theirs[last]["eval_kl"]
        print(f"final held-out KL distill/torch = {ratio:.4f} ({(ratio - 1) * 100:+.2f}%)")
        summary[run] = {
            "distill": {str(s): ours[s] for s in sorted(ours)},
            "torch": {str(s): theirs[s] for s in sorted(theirs)},
            "final_kl_ratio": ratio,
            "distill_train_seconds": seconds,
            "torch_seconds": ref["seconds"],
        }
    kd, sft = (summary[r]["distill"][max(summary[r]["distill"], key=int)] for r in ("kd", "sft"))
    print(
        f"\nfinal held-out KL: KD {kd['eval_kl']:.4f} vs SFT {sft['eval_kl']:.4f}"
        f" ({'KD lower' if kd['eval_kl'] < sft['eval_kl'] else 'KD NOT lower'});"
        f" top-1 KD {kd['eval_top1']:.4f} vs SFT {sft['eval_top1']:.4f}"
    )
    (work / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
