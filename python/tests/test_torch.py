"""distill.torch against distill's own trainer: the same initial student, the same first batch,
the same loss. Skipped where PyTorch is not installed (CI's suite needs only NumPy)."""

import json
import shutil
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

import distill  # noqa: E402
from distill.torch import Llama, PackedBatches, collate, position_losses  # noqa: E402
from distill.torch.losses import distillation_loss  # noqa: E402


def _config(data, out, teacher):
    return (
        f'dataset = "{data}"\noutput = "{out}"\nsteps = 1\nbatch_size = 2\nseq_len = 64\ncheckpoint_every = 100\n'
        f'[student]\ntype = "prune"\nfrom = "{teacher}"\nkeep_layers = [0, 29]\n[schedule]\nwarmup = 1\n'
    )


def test_the_first_step_loss_matches_distills_trainer(tmp_path, coded, teacher):
    config = tmp_path / "run.toml"
    config.write_text(_config(coded, tmp_path / "run", teacher))
    subprocess.run([shutil.which("distill"), "train", str(config), "--export-reference", str(tmp_path / "ref")], check=True)
    outcome = distill.train(config, progress=False)
    step1 = [json.loads(l) for l in open(outcome["metrics"]) if '"loss"' in l][0]

    model = Llama.from_pretrained(str(tmp_path / "ref" / "student"))
    batch = next(iter(PackedBatches(coded, seq_len=64, batch_size=2, seed=0)))
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["position_ids"], batch["segment_ids"])
        ours = distillation_loss(logits, batch).item()
    assert abs(ours - step1["loss"]) < 1e-4 * step1["loss"], (ours, step1["loss"])


def test_losses_follow_their_definitions():
    torch.manual_seed(0)
    logits = torch.randn(5, 40)
    teacher = torch.log_softmax(torch.randn(5, 40), dim=-1)
    top = teacher.topk(8, dim=-1)
    tail = torch.log1p(-top.values.exp().sum(-1).clamp(max=1 - 1e-7))
    # Forward KL on K + 1 buckets, by hand.
    q = torch.log_softmax(logits, dim=-1)
    q_top = q.gather(1, top.indices)
    q_tail = torch.log1p(-q_top.exp().sum(-1))
    p = torch.cat([top.values, tail[:, None]], 1)
    qb = torch.cat([q_top, q_tail[:, None]], 1)
    expected = (p.exp() * (p - qb)).sum(-1)
    got = position_losses(logits, top.indices, top.values, tail)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # JSD(beta) spans forward (0) and reverse (1) KL; the reverse KL by hand.
    reverse = (qb.exp() * (qb - p)).sum(-1)
    torch.testing.assert_close(position_losses(logits, top.indices, top.values, tail, divergence_type="jsd", beta=1.0), reverse, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(position_losses(logits, top.indices, top.values, tail, divergence_type="jsd", beta=0.0), expected, rtol=1e-4, atol=1e-5)
    # A student equal to the teacher loses nothing.
    assert position_losses(teacher, top.indices, top.values, tail).abs().max() < 1e-5


def test_collate_and_ranks_split_the_data(coded):
    seqs = list(distill.Dataset(coded))[:3]
    batch = collate(seqs)
    assert batch["input_ids"].dtype == torch.int64 and batch["topk_logprobs"].shape[:2] == batch["input_ids"].shape
    assert int(batch["loss_mask"].sum()) == sum(len(s["tail_logprobs"]) for s in seqs)
    all_batches = list(PackedBatches(coded, seq_len=64, batch_size=1))
    ranks = [list(PackedBatches(coded, seq_len=64, batch_size=1, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) + len(ranks[1]) == len(all_batches)
    for i, b in enumerate(all_batches):
        assert torch.equal(ranks[i % 2][i // 2]["input_ids"], b["input_ids"])
    assert np.array_equal(all_batches[0]["input_ids"].numpy(), next(distill.Dataset(coded).batches(64, 1))["input_ids"])
