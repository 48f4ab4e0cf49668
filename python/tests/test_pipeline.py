"""train, evaluate, export, generate and the `distill` command, in-process through the package."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import distill


def _config(data, out, teacher, steps=4):
    return {
        "dataset": str(data),
        "eval_dataset": str(data),
        "output": str(out),
        "steps": steps,
        "batch_size": 2,
        "seq_len": 64,
        "eval_every": 2,
        "checkpoint_every": 2,
        "student": {"type": "prune", "from": teacher, "keep_layers": [0], "intermediate_size": 256},
        "optimizer": {"lr": 0.002},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory, coded, teacher):
    out = tmp_path_factory.mktemp("run") / "run"
    events = []
    outcome = distill.train(_config(coded, out, teacher), on_event=lambda k, e: events.append((k, e)), progress=False)
    return out, outcome, events


def test_train_from_a_dict_reports_its_steps_and_writes_the_student(run):
    out, outcome, events = run
    assert outcome["steps"] == 4 and not outcome["interrupted"]
    assert os.path.isfile(os.path.join(outcome["final_dir"], "model.safetensors"))
    kinds = [k for k, _ in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    steps = [e for k, e in events if k == "step"]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert all(s["loss"] > 0 and s["tokens_per_s"] > 0 for s in steps)
    # The same events are in metrics.jsonl, as `distill train` writes them.
    written = [json.loads(l) for l in open(outcome["metrics"]) if '"loss"' in l]
    assert [w["loss"] for w in written] == [s["loss"] for s in steps]
    assert [k for k in kinds if k == "eval"], "held-out evaluations at steps 0, 2, 4"


def test_a_callback_that_raises_stops_the_run_with_a_checkpoint(tmp_path, coded, teacher):
    def stop_at_two(kind, event):
        if kind == "step" and event["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill.train(_config(coded, tmp_path / "run", teacher, steps=6), on_event=stop_at_two, progress=False)
    # It stopped after step 2, not at 6: running it again continues from its checkpoint.
    events = []
    outcome = distill.train(
        _config(coded, tmp_path / "run", teacher, steps=6), on_event=lambda k, e: events.append((k, e)), progress=False
    )
    started = [e for k, e in events if k == "started"][0]
    assert started["resumed_at"] == 2 and outcome["steps"] == 6
    assert [e["step"] for k, e in events if k == "step"] == [3, 4, 5, 6]


def test_a_bad_config_names_the_key(tmp_path, coded, teacher):
    cfg = _config(coded, tmp_path / "run", teacher)
    cfg["stepz"] = 3
    with pytest.raises(distill.DistillError, match="stepz"):
        distill.train(cfg, progress=False)


def test_evaluate_compares_the_student_with_its_teacher(run, heldout, teacher):
    _, outcome, _ = run
    report = distill.evaluate(outcome["final_dir"], heldout, teacher=teacher, max_tokens=8)
    tokens = report["in_domain"]["tokens"]
    assert report["in_domain"]["prompts"] == 3
    assert tokens["kl_forward"] > 0 and 0 <= tokens["top1_agreement"] <= 1
    # The teacher against itself: nothing lost.
    same = distill.evaluate(teacher, heldout, teacher=teacher, max_tokens=8)["in_domain"]["tokens"]
    assert same["kl_forward"] < 1e-4 and same["top1_agreement"] == 1.0


def test_export_writes_gguf_and_hf_that_load_and_generate_the_same(run, tmp_path):
    _, outcome, _ = run
    gguf = distill.export(outcome["final_dir"], tmp_path / "student.gguf", type="f32")
    assert gguf["format"] == "gguf" and gguf["tensors"] > 0 and os.path.getsize(tmp_path / "student.gguf") == gguf["bytes"]
    hf = distill.export(outcome["final_dir"], tmp_path / "hf")
    assert hf["format"] == "hf" and os.path.isfile(tmp_path / "hf" / "config.json")
    with pytest.raises(distill.DistillError, match="already exists"):
        distill.export(outcome["final_dir"], tmp_path / "hf")
    with pytest.raises(distill.DistillError, match="neither"):
        distill.export(outcome["final_dir"], tmp_path / "student.bin")
    a = distill.generate("How do I reset my password?", model=tmp_path / "student.gguf", max_tokens=8, chat=True)
    b = distill.generate("How do I reset my password?", model=tmp_path / "hf", max_tokens=8, chat=True)
    assert a == b and a[0]


def test_model_generate_matches_the_command_line(teacher):
    model = distill.Model(teacher)
    assert model.config["vocab_size"] == 49152
    assert model.decode(model.encode("Hello world")) .endswith("Hello world")
    ours = model.generate(["What is 2+2?", "Name a colour."], max_tokens=10, chat=True)
    exe = shutil.which("distill")
    assert exe, "the package installs the `distill` command"
    cli = subprocess.run(
        [exe, "generate", "--model", teacher, "--json", "--chat", "--max-tokens", "10", "What is 2+2?", "Name a colour."],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [json.loads(l) for l in cli.stdout.splitlines()]
    assert [l["text"] for l in lines] == [o["text"] for o in ours]
    assert [l["completion_tokens"] for l in lines] == [o["completion_tokens"] for o in ours]


def test_the_command_reports_errors_with_an_exit_code(tmp_path):
    exe = shutil.which("distill")
    done = subprocess.run([exe, "inspect", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 1 and "not a distill dataset" in done.stderr
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert distill.__version__ in version.stdout


def test_training_curves_are_readable_by_tensorboard(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, outcome, events = run
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "eval/kl", "eval/top1"):
        assert tag in tags, (tag, tags)
    steps = [e for k, e in events if k == "step"]
    loss = acc.Scalars("train/loss")
    assert [s.step for s in loss] == [e["step"] for e in steps]
    for scalar, event in zip(loss, steps):
        assert abs(scalar.value - event["loss"]) <= 1e-6 * max(1.0, abs(event["loss"]))
    assert [s.step for s in acc.Scalars("eval/kl")] == [e["step"] for k, e in events if k == "eval"]


def test_hf_exports_in_bf16_with_a_model_card_and_ordinary_permissions(run, tmp_path, heldout, teacher):
    out, outcome, _ = run
    # What `distill run` leaves beside the student: its evaluation, which the card reports.
    report = distill.evaluate(outcome["final_dir"], heldout, teacher=teacher, max_tokens=4)
    with open(out / "eval.json", "w") as f:
        json.dump(report, f)
    written = distill.export(outcome["final_dir"], tmp_path / "bf16", type="bf16")
    config = json.load(open(tmp_path / "bf16" / "config.json"))
    assert config["torch_dtype"] == "bfloat16"
    f32 = distill.export(outcome["final_dir"], tmp_path / "f32")
    # Half the bytes for the weights (the tokenizer files are the same).
    weights = lambda d: os.path.getsize(tmp_path / d / "model.safetensors")
    assert abs(weights("bf16") * 2 - weights("f32")) < 0.01 * weights("f32")
    assert written["bytes"] < f32["bytes"]
    for d in ("bf16", "f32"):
        mode = os.stat(tmp_path / d / "model.safetensors").st_mode & 0o777
        assert mode == 0o644, oct(mode)
    card = open(tmp_path / "bf16" / "README.md").read()
    assert "distilled from `SmolLM2-135M-Instruct.Q4_1.gguf`" in card, card
    assert "bf16 safetensors" in card and "4 steps of 2 rows" in card and "loss: forward_kl" in card
    assert "top-1 agreement with the teacher | {:.1f}%".format(report["in_domain"]["tokens"]["top1_agreement"] * 100) in card
    assert os.path.dirname(teacher) not in card, "no path of this machine in a card that travels"
    # The bf16 directory loads and generates.
    assert distill.generate("Hello", model=tmp_path / "bf16", max_tokens=4)[0] is not None
