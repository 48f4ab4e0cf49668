"""distill: knowledge distillation of language models, from Python.

The functions here call the same Rust library as the ``distill`` command, in this process:

>>> import distill
>>> distill.build_dataset("prompts.jsonl", "data/support", k=32, max_tokens=64)
>>> ds = distill.Dataset("data/support")
>>> for batch in ds.batches(seq_len=256, batch_size=8):
...     batch["topk_logprobs"].shape   # (8, 256, 32)
>>> distill.train("examples/quickstart.toml")
>>> distill.evaluate("runs/support/final", "heldout.jsonl")["in_domain"]["tokens"]["top1_agreement"]
>>> distill.export("runs/support/final", "student.q8_0.gguf", type="q8_0")

With PyTorch installed, :mod:`distill.torch` gives an ``IterableDataset`` of tensors.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from . import _distill
from ._distill import DistillError
from .dataset import Dataset, PathLike

__version__: str = _distill.__version__
__all__ = [
    "Dataset",
    "DistillError",
    "Model",
    "build_dataset",
    "default_teacher",
    "evaluate",
    "export",
    "generate",
    "train",
]

Prompt = Union[str, List[Dict[str, str]]]


def default_teacher() -> Optional[str]:
    """The default teacher's GGUF file (SmolLM2-135M-Instruct) if it has been fetched."""
    path = _distill.default_teacher()
    return None if path is None else os.fspath(path)


class Model:
    """A model loaded once for generation: a ``.gguf`` file, an HF directory or a Hub id
    (``None``: the default teacher)."""

    def __init__(self, path: Optional[PathLike] = None) -> None:
        self._native = _distill.Model(None if path is None else os.fspath(path))

    @property
    def source(self) -> str:
        return self._native.source

    @property
    def config(self) -> Dict[str, Any]:
        """The model's config, as HF ``config.json`` fields."""
        return json.loads(self._native.config_json())

    def encode(self, text: str) -> List[int]:
        return list(self._native.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self._native.decode(list(ids))

    def generate(
        self,
        prompts: Union[Prompt, Sequence[Prompt]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
        stop: Sequence[str] = (),
        chat: bool = False,
        system: Optional[str] = None,
        batch_size: int = 8,
    ) -> List[Dict[str, Any]]:
        """Completions, one dict per prompt: ``text``, ``finish_reason``, ``prompt_tokens``,
        ``completion_tokens``, ``token_ids``. A prompt is text (wrapped as a user message in the
        chat template with ``chat=True``) or a list of ``{"role", "content"}`` messages.
        ``temperature=0`` is greedy."""
        if isinstance(prompts, str) or _is_messages(prompts):
            prompts = [prompts]  # type: ignore[list-item]
        encoded = [p if isinstance(p, str) else json.dumps(list(p)) for p in prompts]  # type: ignore[union-attr]
        out = self._native.generate(
            encoded, max_tokens, temperature, top_p, top_k, seed, list(stop), chat, system, batch_size
        )
        return json.loads(out)


def _is_messages(p: Any) -> bool:
    return isinstance(p, list) and bool(p) and isinstance(p[0], dict)


def generate(
    prompts: Union[Prompt, Sequence[Prompt]], model: Union[None, PathLike, Model] = None, **options: Any
) -> List[str]:
    """The completions' texts for ``prompts`` (see :meth:`Model.generate` for ``options``);
    ``model`` is a :class:`Model`, a path or Hub id, or ``None`` for the default teacher."""
    if not isinstance(model, Model):
        model = Model(model)
    return [c["text"] for c in model.generate(prompts, **options)]


def _stderr_progress(label: str) -> Callable[[int, int], None]:
    def show(done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        print(f"\r{label}: {done}/{total}", end=end, file=sys.stderr, flush=True)

    return show


def build_dataset(
    prompts: PathLike,
    output: PathLike,
    *,
    model: Optional[PathLike] = None,
    k: int = 32,
    max_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    completions: int = 1,
    chat: bool = True,
    system: Optional[str] = None,
    system_file: Optional[PathLike] = None,
    system_share: float = 0.5,
    batch_size: int = 8,
    prompts_per_shard: int = 64,
    layout: Optional[str] = None,
    progress: Union[bool, Callable[[int, int], None]] = True,
) -> Dict[str, Any]:
    """Has the teacher ``model`` (default: the default teacher) complete every prompt of the
    JSONL/Parquet file ``prompts`` and score its completions, storing the top-``k``
    log-probabilities in ``output`` — as ``distill generate --dataset`` does. Resumes an
    interrupted build. ``system_file`` (one system message per line) gives a ``system_share`` of
    the prompts one of its messages, drawn by ``seed`` and position, as ``--system-file`` does.
    ``layout`` is ``coded`` (default) or ``plain``. ``progress`` is ``True``
    (a line on stderr), ``False`` or ``callback(done_prompts, total)``. Returns the manifest."""
    callback = _stderr_progress("prompts") if progress is True else (progress or None)
    manifest = _distill.build_dataset(
        os.fspath(prompts),
        os.fspath(output),
        None if model is None else os.fspath(model),
        k,
        max_tokens,
        temperature,
        top_p,
        seed,
        completions,
        chat,
        system,
        batch_size,
        prompts_per_shard,
        layout,
        None if system_file is None else os.fspath(system_file),
        system_share,
        callback,
    )
    return json.loads(manifest)


def train(
    config: Union[PathLike, Dict[str, Any]],
    *,
    on_event: Optional[Callable[[str, Dict[str, Any]], None]] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Trains (or resumes) the run ``config`` describes: a TOML or JSON file, TOML text, or a
    dict with the same keys (see ``docs/config.md``). ``on_event(kind, data)`` hears
    ``started``, ``step`` (loss, lr, grad_norm, tokens_per_s …), ``eval`` and ``finished``;
    raising from it (or Ctrl-C) stops the run after the current step with a checkpoint. Returns
    the outcome: ``steps``, ``tokens``, ``seconds``, ``interrupted``, ``final_dir`` …"""
    text, fmt = _config_text(config)
    total = [0]

    def hear(kind: str, data: str) -> None:
        event = json.loads(data)
        if progress:
            if kind == "started":
                total[0] = event["steps"]
            elif kind == "step":
                print(
                    f"\rstep {event['step']}/{total[0]}  loss {event['loss']:.4f}  "
                    f"{event['tokens_per_s']:.0f} tok/s",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
            elif kind == "eval":
                print(f"\n  held-out KL {event['eval_kl']:.4f}  top-1 {event['eval_top1']:.3f}", file=sys.stderr)
            elif kind == "finished":
                print(file=sys.stderr)
        if on_event is not None:
            on_event(kind, event)

    return json.loads(_distill.train(text, fmt, hear))


def _config_text(config: Union[PathLike, Dict[str, Any]]) -> "tuple[str, str]":
    if isinstance(config, dict):
        return json.dumps(config), "json"
    if isinstance(config, str) and ("\n" in config or "=" in config) and not os.path.exists(config):
        return config, "toml"
    path = os.fspath(config)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return text, ("json" if path.endswith(".json") else "toml")


def evaluate(
    student: PathLike,
    prompts: PathLike,
    *,
    teacher: Optional[PathLike] = None,
    ood_prompts: Optional[PathLike] = None,
    max_tokens: int = 64,
    batch_size: int = 8,
) -> Dict[str, Any]:
    """Compares ``student`` with ``teacher`` (default: the default teacher) on a prompt file,
    as ``distill eval --no-speed`` does: KL both ways, top-1 agreement, perplexities, ROUGE-L,
    repetition and retention. Returns the report (``in_domain``, ``out_of_domain``, ``cost`` …)."""
    report = _distill.evaluate(
        os.fspath(student),
        os.fspath(prompts),
        None if teacher is None else os.fspath(teacher),
        None if ood_prompts is None else os.fspath(ood_prompts),
        max_tokens,
        batch_size,
    )
    return json.loads(report)


def export(
    model: PathLike,
    output: PathLike,
    *,
    type: Optional[str] = None,
    name: Optional[str] = None,
    force: bool = False,
) -> Dict[str, Any]:
    """Writes ``model`` (a training run's ``final/``, an HF directory or a GGUF file) to
    ``output``: a ``.gguf`` file with matrices in ``type`` (f32, f16 — the default —, q8_0,
    q6_k, q5_k_m, q4_k_m, q4_0; mixed as llama.cpp's quantiser mixes them, the output head at 6
    bits), or an HF directory with safetensors weights in ``type`` (f32 — the default —, f16,
    bf16). An existing output is refused unless ``force``. Returns what was written."""
    return json.loads(_distill.export(os.fspath(model), os.fspath(output), type, name, force))
