"""Shared fixtures: small teacher-signal datasets built once by the default teacher.

The default teacher (SmolLM2-135M-Instruct, fetched by scripts/fetch-teacher.sh) is real; every
test runs the library in-process through the installed package.
"""

import json
import os
from pathlib import Path

import pytest

import distill

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def teacher() -> str:
    path = distill.default_teacher()
    if path is None:
        pytest.fail("the default teacher is not fetched: run scripts/fetch-teacher.sh")
    return path


@pytest.fixture(scope="session")
def prompts(tmp_path_factory) -> Path:
    lines = [json.loads(l) for l in (ROOT / "examples/support/train.jsonl").read_text().splitlines() if l.strip()]
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps(l) + "\n" for l in lines[:6]))
    return path


@pytest.fixture(scope="session")
def heldout(tmp_path_factory) -> Path:
    lines = [json.loads(l) for l in (ROOT / "examples/support/heldout.jsonl").read_text().splitlines() if l.strip()]
    path = tmp_path_factory.mktemp("heldout") / "heldout.jsonl"
    path.write_text("".join(json.dumps(l) + "\n" for l in lines[:3]))
    return path


def _build(tmp_path_factory, teacher, prompts, layout):
    out = tmp_path_factory.mktemp(f"data-{layout}") / "data"
    distill.build_dataset(
        prompts, out, model=teacher, k=8, max_tokens=12, prompts_per_shard=4, layout=layout, progress=False
    )
    return out


@pytest.fixture(scope="session")
def coded(tmp_path_factory, teacher, prompts) -> Path:
    return _build(tmp_path_factory, teacher, prompts, "coded")


@pytest.fixture(scope="session")
def plain(tmp_path_factory, teacher, prompts) -> Path:
    return _build(tmp_path_factory, teacher, prompts, "plain")
