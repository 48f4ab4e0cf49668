"""distill.Dataset and build_dataset: what the teacher stored, read back as NumPy arrays."""

import json

import numpy as np
import pyarrow.dataset
import pyarrow.parquet as pq
import pytest

import distill


def test_sequences_carry_a_normalised_teacher_signal(coded):
    ds = distill.Dataset(coded)
    assert ds.layout == "coded" and ds.k == 8 and ds.num_shards == 2
    seqs = list(ds)
    assert len(seqs) == len(ds) == 6
    assert sum(len(s["tail_logprobs"]) for s in seqs) == ds.num_tokens
    for s in seqs:
        t, p = len(s["token_ids"]), s["prompt_len"]
        assert s["token_ids"].dtype == np.int32 and s["topk_logprobs"].dtype == np.float32
        assert s["topk_ids"].shape == s["topk_logprobs"].shape == (t - p, 8)
        lp = s["topk_logprobs"].astype(np.float64)
        assert np.all(np.diff(lp, axis=1) <= 1e-6), "top-k sorted, most likely first"
        # top-k mass plus the tail is the whole distribution (to the stored precision).
        total = np.exp(lp).sum(axis=1) + np.exp(s["tail_logprobs"].astype(np.float64))
        np.testing.assert_allclose(total, 1.0, atol=2e-2)
        # Greedy completions: the completion token is the teacher's top-1.
        np.testing.assert_array_equal(s["topk_ids"][:, 0], s["token_ids"][p:])
        assert s["loss_mask"].sum() == t - p and s["loss_mask"][p - 1] == 1 and s["loss_mask"][p - 2] == 0


def test_coded_and_plain_layouts_decode_to_the_same_signal(coded, plain):
    a, b = list(distill.Dataset(coded)), list(distill.Dataset(plain))
    assert distill.Dataset(plain).layout == "plain"
    assert [s["prompt_index"] for s in a] == [s["prompt_index"] for s in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["token_ids"], y["token_ids"])
        np.testing.assert_array_equal(x["topk_ids"], y["topk_ids"])
        # Both quantise log-probabilities; their steps differ, so they agree to a few of them.
        np.testing.assert_allclose(x["topk_logprobs"], y["topk_logprobs"], atol=0.1)


def test_plain_shards_match_what_pyarrow_reads(plain):
    ds = distill.Dataset(plain)
    table = pq.read_table(plain / ds.manifest["shards"][0]["file"])
    ours = ds.shard(0)
    assert table.num_rows == len(ours)
    ids, topk = table.column("token_ids").to_pylist(), table.column("topk_ids").to_pylist()
    for record, row, top in zip(ours, ids, topk):
        assert record["token_ids"].tolist() == row
        assert record["topk_ids"].reshape(-1).tolist() == top
    # The whole directory as one pyarrow dataset, its manifest and source files skipped.
    whole = pyarrow.dataset.dataset(plain, format="parquet", exclude_invalid_files=True).to_table()
    assert whole.num_rows == len(ds)


def test_batches_pack_every_target_once_per_epoch_and_follow_the_seed(coded):
    ds = distill.Dataset(coded)
    batches = list(ds.batches(seq_len=128, batch_size=2, seed=3))
    assert batches, "the dataset packs into batches"
    b = batches[0]
    assert b["input_ids"].shape == (2, 128) and b["topk_logprobs"].shape == (2, 128, 8)
    assert sum(int(b["loss_mask"].sum()) for b in batches) == ds.num_tokens
    for b in batches:
        masked = b["loss_mask"] > 0
        # Where there is a signal, the target is the teacher's greedy top-1; padding has none.
        np.testing.assert_array_equal(b["target_ids"][masked], b["topk_ids"][masked][:, 0])
        assert not masked[b["segment_ids"] == 0].any()
    again = list(ds.batches(seq_len=128, batch_size=2, seed=3))
    other = list(ds.batches(seq_len=128, batch_size=2, seed=4))
    assert all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(batches, again))
    assert any(not np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(batches, other))


def test_a_directory_that_is_not_a_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(distill.DistillError, match="not a distill dataset"):
        distill.Dataset(tmp_path)


def test_a_resumed_build_with_other_settings_is_refused(coded, prompts, teacher):
    with pytest.raises(distill.DistillError, match="k"):
        distill.build_dataset(prompts, coded, model=teacher, k=4, max_tokens=12, prompts_per_shard=4, progress=False)


def test_system_messages_from_a_file_go_to_a_share_of_the_prompts(tmp_path, prompts, teacher):
    systems = tmp_path / "system.txt"
    systems.write_text("Be brief.\nYou sell shoes.\n")
    out = tmp_path / "data"
    manifest = distill.build_dataset(
        prompts, out, model=teacher, k=4, max_tokens=4, system_file=systems, system_share=1.0, progress=False
    )
    assert manifest["spec"]["system_messages"]["messages"] == 2
    copy = [json.loads(l) for l in (out / "source" / "prompts.jsonl").read_text().splitlines()]
    assert len(copy) == 6
    assert all(r["messages"][0]["content"] in ("Be brief.", "You sell shoes.") for r in copy)
    with pytest.raises(distill.DistillError, match="share of prompts given a system message is 2"):
        distill.build_dataset(prompts, tmp_path / "other", model=teacher, system_file=systems, system_share=2.0)
