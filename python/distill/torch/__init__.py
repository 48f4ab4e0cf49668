"""PyTorch access to a teacher-signal dataset: an ``IterableDataset`` of packed batches (the
ones ``distill train`` trains on), a collator for per-sequence use, distill's losses
(:mod:`distill.torch.losses`) and a plain Llama-family model that loads distill's HF directories
(:mod:`distill.torch.model`), for training with PyTorch (DDP, FSDP) on what distill stored.

>>> from torch.utils.data import DataLoader
>>> from distill.torch import PackedBatches
>>> loader = DataLoader(PackedBatches("data/support", seq_len=256, batch_size=8), batch_size=None)

Token ids come as int64, log-probabilities and masks as float32. Under ``torch.distributed``
(and across DataLoader workers) each process takes every N-th batch, so ranks see disjoint
batches of the same epoch order.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..dataset import Dataset, PathLike
from .losses import distillation_loss, position_losses
from .model import Llama

_IDS = ("input_ids", "position_ids", "segment_ids", "target_ids", "topk_ids", "token_ids", "positions")


def to_tensors(record: Dict[str, Any]) -> Dict[str, Any]:
    """A record of NumPy arrays as tensors (ids int64, the rest float32); scalars as they are."""
    out: Dict[str, Any] = {}
    for name, value in record.items():
        if isinstance(value, np.ndarray):
            dtype = np.int64 if name in _IDS else np.float32
            out[name] = torch.from_numpy(np.array(value, dtype=dtype))
        else:
            out[name] = value
    return out


class PackedBatches(IterableDataset):
    """Packed training batches over ``epochs`` epochs (``epoch`` counts from ``first_epoch``),
    as ``Dataset.batches`` makes them; use with ``DataLoader(..., batch_size=None)``.

    ``rank``/``world_size`` default to ``torch.distributed``'s when it is initialised."""

    def __init__(
        self,
        path: PathLike,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        epochs: int = 1,
        first_epoch: int = 0,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.dataset = Dataset(path)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.epochs, self.first_epoch = epochs, first_epoch
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if distributed else 0)
        self.world_size = (
            world_size if world_size is not None else (torch.distributed.get_world_size() if distributed else 1)
        )

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        stride = self.world_size * workers
        slot = self.rank * workers + worker_id
        index = 0
        for epoch in range(self.first_epoch, self.first_epoch + self.epochs):
            for batch in self.dataset.batches(self.seq_len, self.batch_size, self.seed, epoch):
                if index % stride == slot:
                    yield to_tensors(batch)
                index += 1


def collate(sequences: List[Dict[str, Any]], pad_id: int = 0) -> Dict[str, torch.Tensor]:
    """Pads sequence records (from iterating a :class:`~distill.Dataset`) into one batch, one
    sequence per row: ``input_ids``, ``target_ids``, ``loss_mask``, ``attention_mask`` ``(B, T)``
    and ``topk_ids``/``topk_logprobs`` ``(B, T, K)``, ``tail_logprobs`` ``(B, T)`` placed at the
    positions that predict each completion token."""
    length = max(len(s["token_ids"]) for s in sequences)
    k = sequences[0]["topk_ids"].shape[1]
    b = len(sequences)
    input_ids = np.full((b, length), pad_id, dtype=np.int64)
    target_ids = np.full((b, length), pad_id, dtype=np.int64)
    attention = np.zeros((b, length), dtype=np.int64)
    loss_mask = np.zeros((b, length), dtype=np.float32)
    topk_ids = np.zeros((b, length, k), dtype=np.int64)
    topk_logprobs = np.full((b, length, k), -np.inf, dtype=np.float32)
    tail = np.zeros((b, length), dtype=np.float32)
    for row, s in enumerate(sequences):
        ids = s["token_ids"]
        t, p = len(ids), int(s["prompt_len"])
        input_ids[row, :t] = ids
        target_ids[row, : t - 1] = ids[1:]
        attention[row, :t] = 1
        completion = t - p
        start = p - 1
        loss_mask[row, start : start + completion] = 1.0
        topk_ids[row, start : start + completion] = s["topk_ids"]
        topk_logprobs[row, start : start + completion] = s["topk_logprobs"]
        tail[row, start : start + completion] = s["tail_logprobs"]
    arrays = {
        "input_ids": input_ids,
        "target_ids": target_ids,
        "attention_mask": attention,
        "loss_mask": loss_mask,
        "topk_ids": topk_ids,
        "topk_logprobs": topk_logprobs,
        "tail_logprobs": tail,
    }
    return {name: torch.from_numpy(a) for name, a in arrays.items()}
