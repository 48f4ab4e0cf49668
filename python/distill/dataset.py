"""Reading a teacher-signal dataset (the directory `distill generate --dataset` writes).

Both shard layouts (`coded`, the default, and `plain`) are decoded by distill's own reader, so
the arrays are what `distill train` trains on.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, Union

import numpy as np

from . import _distill
from ._arrays import to_arrays

PathLike = Union[str, "os.PathLike[str]"]


class Dataset:
    """A teacher-signal dataset directory.

    Iterating gives one dict per stored sequence (prompt then one completion):

    - ``token_ids`` int32 ``(T,)``: prompt then completion tokens; ``prompt_len`` of them are prompt.
    - ``topk_ids`` int32 ``(Tc, K)`` and ``topk_logprobs`` float32 ``(Tc, K)``: the teacher's
      top-K for predicting each completion token, most likely first (``Tc = T - prompt_len``).
    - ``tail_logprobs`` float32 ``(Tc,)``: ``log(1 - sum of the top-K probabilities)``.
    - ``positions`` int32 ``(T,)`` and ``loss_mask`` float32 ``(T,)``: 1 where the next token is a
      completion token, i.e. at positions ``prompt_len - 1 .. T - 2``, which row ``j`` of the
      top-K arrays (predicting token ``prompt_len + j``) belongs to.
    - ``prompt_index``, ``prompt_id``, ``sample``: where it came from.

    :meth:`batches` packs sequences into training batches exactly as ``distill train`` does.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self._native = _distill.Dataset(self.path)
        self.manifest: Dict[str, Any] = json.loads(self._native.manifest_json())

    @property
    def k(self) -> int:
        """Top-K entries stored per completion token."""
        return int(self.manifest["spec"]["k"])

    @property
    def layout(self) -> str:
        """``coded`` (format version 2) or ``plain`` (version 1)."""
        return "plain" if self.manifest["format_version"] == 1 else "coded"

    @property
    def num_shards(self) -> int:
        return int(self._native.num_shards)

    @property
    def num_tokens(self) -> int:
        """Completion tokens with a stored teacher signal."""
        return sum(int(s["tokens"]) for s in self.manifest["shards"])

    def __len__(self) -> int:
        return sum(int(s["sequences"]) for s in self.manifest["shards"])

    def __repr__(self) -> str:
        return f"Dataset({self.path!r}: {len(self)} sequences, {self.num_tokens} tokens, k={self.k}, {self.layout})"

    def shard(self, index: int) -> list:
        """The sequences of shard ``index`` in file order."""
        return [_with_positions(to_arrays(r)) for r in self._native.read_shard(index)]

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        for index in range(self.num_shards):
            yield from self.shard(index)

    sequences = __iter__

    def batches(
        self, seq_len: int, batch_size: int, seed: int = 0, epoch: int = 0, skip_empty: bool = True
    ) -> Iterator[Dict[str, np.ndarray]]:
        """One epoch of packed batches, as ``distill train`` packs them for ``seq_len``,
        ``batch_size`` (rows per micro-batch), ``seed`` and ``epoch``: whole sequences placed one
        after another in rows (a longer one is cut), shuffled with ``seed + epoch``, padding id 0.

        Each batch has ``input_ids``, ``position_ids`` (within each sequence),
        ``segment_ids`` (0 padding, 1.. the sequence within its row: attention must not cross
        them), ``target_ids`` (the next token), ``loss_mask`` — all ``(B, L)`` — and
        ``topk_ids``/``topk_logprobs`` ``(B, L, K)`` and ``tail_logprobs`` ``(B, L)``. With
        ``skip_empty`` batches without a teacher signal are left out, as the trainer does.
        """
        for batch in _distill.Batches(self._native, seq_len, batch_size, seed, epoch):
            batch = to_arrays(batch)
            if skip_empty and not batch["loss_mask"].any():
                continue
            yield batch


def _with_positions(record: Dict[str, Any]) -> Dict[str, Any]:
    length = len(record["token_ids"])
    prompt_len = int(record["prompt_len"])
    record["positions"] = np.arange(length, dtype=np.int32)
    mask = np.zeros(length, dtype=np.float32)
    mask[max(prompt_len - 1, 0) : length - 1] = 1.0
    record["loss_mask"] = mask
    return record
